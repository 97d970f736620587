"""CSV encodings decided on the whole file: damaged bytes make damaged cells, never garbage.

Each file is made the way issue 11 describes a real export that once went wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_enricher import encoding
from batch_enricher.errors import InputError
from batch_enricher.reader import Cell, Source, open_source

HEADERS_ZH = ("姓名", "身份证号", "手机号", "备注")
HEADERS_EN = ("name", "idcard", "mobile", "note")
PEOPLE = [
    ("张三", "11010119900307803X", "13812345678", "老客户"),
    ("李四", "440524198001010013", "13912345678", "新客户"),
    ("王五", "110101199003078034", "13712345678", "转介绍"),
    ("赵六", "110101199003078035", "13612345678", "备注"),
]


def _csv(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "".join(",".join(row) + "\r\n" for row in [header, *rows])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _numbered(source: Source) -> list[tuple[int, list[Cell]]]:
    first, second = list(source.numbered_rows()), list(source.numbered_rows())
    assert first == second
    return first


def _damaged(source: Source) -> dict[int, str]:
    """Row number -> damage reason, for every damaged row."""
    return {
        number: reason
        for number, row in source.numbered_rows()
        if (reason := source.damage_reason(number, row)) is not None
    }


# --- a GBK export with one stray byte -------------------------------------------------------


@pytest.mark.parametrize("header", [HEADERS_ZH, HEADERS_EN])
def test_gbk_export_with_a_stray_euro_byte_stays_gbk(
    tmp_path: Path, header: tuple[str, ...]
) -> None:
    # cp936 writes € as 0x80, which GB18030 does not decode. Once, that one byte made the
    # whole file ISO-8859-5: with English headers every name became Cyrillic and was paid for.
    data = _csv(header, PEOPLE).encode("gbk").replace("新客户".encode("gbk"), b"\x80100")
    source = open_source(_write(tmp_path / "gbk.csv", data))
    assert (source.encoding, source.damaged) == ("gb18030", True)
    rows = _numbered(source)
    assert [row[0] for _, row in rows] == ["张三", "李四", "王五", "赵六"]  # names intact
    assert rows[1][1][3] == "\ufffd100"
    assert _damaged(source) == {
        3: f"row 3, column 4 ({header[3]}): bytes that are not valid GB18030 (a damaged or "
        "mixed encoding); fix the cell or pass --encoding"
    }


def test_a_header_lost_to_damaged_bytes_says_so(tmp_path: Path) -> None:
    from batch_enricher.columns import ColumnNames

    data = _csv(HEADERS_ZH, PEOPLE * 3).encode("gbk").replace("姓名".encode("gbk"), b"\x80\x80")
    with pytest.raises(InputError) as caught:
        open_source(_write(tmp_path / "gbk.csv", data), names=ColumnNames())
    message = str(caught.value)
    assert message.startswith("no name column found")
    assert "not valid GB18030: the file's encoding may be damaged or mixed" in message


def test_a_double_byte_character_cut_at_the_end(tmp_path: Path) -> None:
    data = _csv(HEADERS_ZH, PEOPLE).encode("gbk").rstrip(b"\r\n")[:-1]  # half of 注
    source = open_source(_write(tmp_path / "cut.csv", data))
    assert (source.encoding, source.damaged) == ("gb18030", True)
    rows = _numbered(source)
    assert rows[-1] == (5, ["赵六", "110101199003078035", "13612345678", "备\ufffd"])
    assert list(_damaged(source)) == [5]


def test_a_gbk_name_in_a_utf8_file_is_a_damaged_row_not_mojibake(tmp_path: Path) -> None:
    data = _csv(HEADERS_ZH, PEOPLE).encode() + "钱七,1,2,3\r\n".encode("gbk")
    source = open_source(_write(tmp_path / "mixed.csv", data))
    assert (source.encoding, source.damaged) == ("utf-8", True)
    assert list(_damaged(source)) == [6]
    assert [row[0] for _, row in _numbered(source)][:4] == ["张三", "李四", "王五", "赵六"]


def test_utf8_lines_in_a_gbk_file_are_damaged_rows_not_mojibake(tmp_path: Path) -> None:
    # GB18030 decodes the UTF-8 bytes of 张三 without an error, as 寮犱笁: such lines are
    # recognised (valid UTF-8, rare characters in GB18030) and their text is marked damaged.
    gbk = _csv(HEADERS_ZH, PEOPLE * 5).encode("gbk")
    utf8 = "孙八,110101199003078036,13512345678,网上\r\n".encode()
    source = open_source(_write(tmp_path / "mixed.csv", gbk + utf8))
    assert (source.encoding, source.damaged) == ("gb18030", True)
    rows = dict(_numbered(source))
    assert rows[22] == ["\ufffd" * 6, "110101199003078036", "13512345678", "\ufffd" * 6]
    assert "寮" not in str(rows) and rows[2][0] == "张三"
    assert list(_damaged(source)) == [22]


def test_utf8_that_gb18030_reads_as_mostly_common_characters_is_still_damaged(
    tmp_path: Path,
) -> None:
    # 赵伟 in UTF-8 reads as 璧典紵 in GB18030: two common characters of three. It was sent.
    gbk = _csv(HEADERS_ZH, PEOPLE * 5).encode("gbk")
    utf8 = "赵伟,110101199003078036,13512345678,网上\r\n".encode()
    source = open_source(_write(tmp_path / "mixed.csv", gbk + utf8))
    assert (source.encoding, source.damaged) == ("gb18030", True)
    assert list(_damaged(source)) == [22]
    assert "璧" not in str(_numbered(source))


def test_half_gbk_half_utf8_is_refused_naming_lines_and_encoding(tmp_path: Path) -> None:
    gbk = _csv(HEADERS_ZH, PEOPLE).encode("gbk")
    utf8 = "".join(",".join(p) + "\r\n" for p in PEOPLE).encode()
    with pytest.raises(InputError) as caught:
        open_source(_write(tmp_path / "half.csv", gbk + utf8))
    message = str(caught.value)
    assert "mixes text encodings (line 1 is not UTF-8 but line 6 is)" in message
    assert "--encoding" in message
    assert "张三" not in message and "寮" not in message


def test_latin1_copyright_sign_is_not_read_as_katakana(tmp_path: Path) -> None:
    text = "name,idcard,mobile,note\r\nJosé Müller,X,1,© 2024\r\nZoë Brontë,Y,2,Zürich\r\n"
    source = open_source(_write(tmp_path / "latin1.csv", text.encode("latin-1")))
    assert source.encoding == "cp1252"
    rows = [row for _, row in _numbered(source)]
    assert rows == [["José Müller", "X", "1", "© 2024"], ["Zoë Brontë", "Y", "2", "Zürich"]]


def test_latin1_that_happens_to_be_valid_gb18030_is_read_as_latin(tmp_path: Path) -> None:
    # Every accented letter is followed by a letter: each pair is a valid GBK character, but
    # a rare one; real Chinese text is mostly GB2312 characters.
    text = "name,city\r\nMüller,Zürich\r\nFrançois,Hérault\r\n"
    source = open_source(_write(tmp_path / "latin1.csv", text.encode("latin-1")))
    assert source.encoding == "cp1252"
    assert [row for _, row in _numbered(source)] == [["Müller", "Zürich"], ["François", "Hérault"]]


def test_chinese_too_damaged_for_gb18030_is_refused_not_read_as_latin(tmp_path: Path) -> None:
    # Three bad spots among eight good characters: not "mostly" GB18030. A Latin code page
    # reads any bytes, but GBK through it comes out as runs of accents ("ÕÅÈý"): refused.
    rows = [(name, idcard, mobile, "\x80") for name, idcard, mobile, _ in PEOPLE[:3]]
    rows.append((*PEOPLE[3][:3], ""))
    data = _csv(HEADERS_EN, rows).encode("gbk", errors="ignore").replace(b",\r\n", b",\x80\r\n")
    with pytest.raises(InputError, match=r"cannot tell its text encoding.*--encoding"):
        open_source(_write(tmp_path / "gbk.csv", data))


def test_a_utf8_file_with_one_bad_byte_is_utf8_with_one_damaged_cell(tmp_path: Path) -> None:
    data = _csv(HEADERS_ZH, PEOPLE).encode().replace("王五".encode(), "王".encode() + b"\xff")
    source = open_source(_write(tmp_path / "bad.csv", data))
    assert (source.encoding, source.damaged) == ("utf-8", True)
    rows = dict(_numbered(source))
    assert rows[4][0] == "王\ufffd"
    assert source.damaged_cell(rows[4]) == 0
    assert list(_damaged(source)) == [4]


def test_text_no_encoding_reads_is_refused_with_line_and_advice(tmp_path: Path) -> None:
    text = b"name,idcard,mobile\r\nAB,1,2\r\n" + b"\x81\x20\xfe\x2c\xa0\x20\x81\r\n" * 3
    with pytest.raises(InputError) as caught:
        open_source(_write(tmp_path / "noise.csv", text))
    message = str(caught.value)
    assert "cannot tell its text encoding: line 3 is not valid UTF-8" in message
    assert "--encoding" in message


def test_an_explicit_encoding_is_read_strictly(tmp_path: Path) -> None:
    data = _csv(HEADERS_ZH, PEOPLE * 1000).encode("gbk") + b"\x80,1,2,3\r\n"
    source = open_source(_write(tmp_path / "gbk.csv", data), encoding="gbk")
    assert not source.damaged
    with pytest.raises(InputError, match=r"line 4002 is not valid gbk text"):
        list(source.rows())


# --- NUL bytes ------------------------------------------------------------------------------


def _with_nul_in_row(row: int, total: int) -> bytes:
    rows = [("张三", "11010119900307803X", "13812345678", f"n{i}") for i in range(total)]
    rows[row - 2] = ("张\x00三", "11010119900307803X", "13812345678", "x")
    return _csv(HEADERS_ZH, rows).encode()


@pytest.mark.parametrize("row", [2, 60_000])
def test_a_nul_byte_is_a_damaged_cell_wherever_it_is(tmp_path: Path, row: int) -> None:
    # Once, a NUL in the first megabyte refused the whole file, while the same NUL later was
    # read as text: now both are the same damaged cell.
    path = _write(tmp_path / "nul.csv", _with_nul_in_row(row, 60_000))
    assert path.stat().st_size > 2 << 20
    source = open_source(path)
    assert (source.encoding, source.damaged) == ("utf-8", True)
    damaged = _damaged(source)
    assert damaged == {
        row: f"row {row}, column 1 (姓名): holds a NUL byte (the file is damaged); fix the cell "
        "or pass --encoding"
    }


def test_one_nul_in_a_tiny_file_is_a_damaged_cell_too(tmp_path: Path) -> None:
    # csvkit's examples/null_byte.csv: a NUL is 8 % of its bytes, but it is one damaged cell.
    source = open_source(_write(tmp_path / "null_byte.csv", b"a,b,c\n\x00,2,3\n"))
    assert source.damaged
    assert [(n, source.damaged_cell(row)) for n, row in source.numbered_rows()] == [(2, 0)]


def test_a_file_full_of_nuls_and_controls_is_binary(tmp_path: Path) -> None:
    data = b"name,idcard,mobile\r\n" + bytes(range(32)) * 2000
    with pytest.raises(InputError, match="is a binary file, not CSV text"):
        open_source(_write(tmp_path / "blob.csv", data))


def test_utf16_without_a_bom(tmp_path: Path) -> None:
    for codec in ("utf-16-le", "utf-16-be"):
        path = _write(tmp_path / "u16.csv", _csv(HEADERS_ZH, PEOPLE).encode(codec))
        source = open_source(path)
        assert source.encoding == codec
        assert [row[0] for _, row in _numbered(source)] == ["张三", "李四", "王五", "赵六"]


# --- the module on its own ------------------------------------------------------------------


def test_choose_streams_big_files_in_bounded_pieces(tmp_path: Path) -> None:
    # Lines longer than a chunk are judged in pieces; the decision still covers the file.
    line = ("张三," + "备" * (encoding.CHUNK // 2) + "\r\n").encode("gbk")
    path = _write(tmp_path / "long.csv", "姓名,备注\r\n".encode("gbk") + line * 3)
    decoding = encoding.choose(path)
    assert (decoding.codec, decoding.damaged) == ("gb18030", False)


def test_blanked_spans_read_as_undecodable(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "ab张三\r\n李四\r\n".encode())
    decoding = encoding.Decoding("utf-8", "UTF-8", damaged=True, foreign=((0, 5),))
    with encoding.open_text(path, decoding) as f:
        assert f.read() == "ab\ufffd\ufffd\ufffd三\r\n李四\r\n"


def test_mangled_csv_files_read_or_give_one_input_error(tmp_path: Path) -> None:
    # Seeded, bounded: cut, flipped, NUL-filled and spliced variants of UTF-8 and GBK exports.
    import random

    rng = random.Random(7)
    originals = [
        _csv(HEADERS_ZH, PEOPLE * 30).encode(),
        _csv(HEADERS_ZH, PEOPLE * 30).encode("gbk"),
        _csv(HEADERS_EN, PEOPLE * 30).encode("gbk"),
    ]
    path = tmp_path / "mangled.csv"
    outcomes = {"read": 0, "refused": 0}
    for case in range(150):
        data = bytearray(rng.choice(originals))
        how = case % 4
        if how == 0:
            del data[rng.randrange(1, len(data)) :]
        elif how == 1:
            for _ in range(rng.randrange(1, 12)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == 2:
            start = rng.randrange(len(data))
            data[start : start + rng.randrange(1, 64)] = b"\x00" * rng.randrange(1, 64)
        else:
            data += rng.choice(originals)[rng.randrange(200) :]
        path.write_bytes(bytes(data))
        try:
            source = open_source(path)
            for number, row in source.numbered_rows():
                source.damage_reason(number, row)
            outcomes["read"] += 1
        except InputError as exc:
            assert str(exc).startswith(str(path)), str(exc)
            outcomes["refused"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0
