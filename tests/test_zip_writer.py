"""Tests for batch_enricher.zip_writer: raw copies, spooled entries, order, Zip64 records."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from batch_enricher import zip_writer
from batch_enricher.zip_writer import DeflateSpool, ZipWriter


def _source(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("[Content_Types].xml", (2020, 5, 6, 7, 8, 10)), b"<Types/>")
        deflated = zipfile.ZipInfo("xl/big.xml", (2021, 1, 2, 3, 4, 6))
        deflated.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(deflated, b"<x>" + b"data " * 20000 + b"</x>", compresslevel=9)
        zf.writestr("media/图片.png", b"\x89PNG stored")  # a non-ASCII name, stored
    return path


def test_copies_keep_compressed_bytes_order_and_metadata(tmp_path: Path) -> None:
    src = _source(tmp_path / "in.zip")
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin:
        writer = ZipWriter(out)
        infos = zin.infolist()
        writer.add_copy(zin, infos[0])
        writer.add_bytes("new.xml", b"<new/>" * 100, infos[1])
        writer.add_copy(zin, infos[1])
        writer.add_copy(zin, infos[2])
        writer.close()
        with zipfile.ZipFile(out) as zout:
            assert zout.testzip() is None
            names = [info.filename for info in zout.infolist()]
            assert names == ["[Content_Types].xml", "new.xml", "xl/big.xml", "media/图片.png"]
            for before in infos:
                after = zout.getinfo(before.filename)
                assert zout.read(after) == zin.read(before)
                assert (after.CRC, after.compress_size, after.compress_type, after.date_time) == (
                    before.CRC,
                    before.compress_size,
                    before.compress_type,
                    before.date_time,
                )
            assert zout.read("new.xml") == b"<new/>" * 100
            assert zout.getinfo("new.xml").compress_type == zipfile.ZIP_DEFLATED


def test_a_spooled_entry_reads_back(tmp_path: Path) -> None:
    spool = DeflateSpool(tmp_path, level=2)
    chunks = [f"<row r='{n}'>{'x' * (n % 50)}</row>".encode() for n in range(5000)]
    for chunk in chunks:
        spool.write(chunk)
    spool.finish()
    assert list(tmp_path.iterdir()) == []  # anonymous: nothing to leave behind
    out = io.BytesIO()
    writer = ZipWriter(out)
    writer.add_spool("sheet.xml", spool, zipfile.ZipInfo("x", (2024, 1, 2, 3, 4, 5)))
    writer.close()
    spool.close()
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.read("sheet.xml") == b"".join(chunks)


def test_many_entries_get_zip64_end_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zip_writer, "_COUNT_LIMIT", 3)  # instead of 65,535 entries
    out = io.BytesIO()
    writer = ZipWriter(out)
    like = zipfile.ZipInfo("x")
    for number in range(5):
        writer.add_bytes(f"part{number}.xml", f"<p{number}/>".encode(), like)
    writer.close()
    assert b"PK\x06\x06" in out.getvalue() and b"PK\x06\x07" in out.getvalue()
    with zipfile.ZipFile(out) as zf:
        assert [zf.read(f"part{n}.xml") for n in range(5)] == [
            f"<p{n}/>".encode() for n in range(5)
        ]


def test_an_encrypted_entry_is_refused(tmp_path: Path) -> None:
    src = _source(tmp_path / "in.zip")
    with zipfile.ZipFile(src) as zin:
        info = zin.infolist()[0]
        info.flag_bits |= 0x1
        with pytest.raises(zipfile.BadZipFile, match="encrypted"):
            ZipWriter(io.BytesIO()).add_copy(zin, info)
