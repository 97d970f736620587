"""A ZIP writer that copies entries of another archive as they are, compressed bytes and all.

Python's zipfile recompresses whatever it writes. `ZipWriter` writes an archive entry by
entry in the order it is given: entries of a source archive copied raw (`add_copy`: their
compressed bytes, CRC and method as they were), new content deflated (`add_bytes`), or content
already deflated into a `DeflateSpool` (`add_spool`). That lets a workbook be rewritten with
its entries in their original order, whatever was produced last: tools that identify a file
by its first entries (libmagic's `file`, upload checks built on it) see an edited workbook as
they saw the original. Zip64 records are written only where a size, an offset or the entry
count needs them.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Final

_LOCAL: Final = struct.Struct("<4s5H3L2H")
_CENTRAL: Final = struct.Struct("<4s6H3L5H2L")
_END: Final = struct.Struct("<4s4H2LH")
_END64: Final = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64: Final = struct.Struct("<4sLQL")
_LIMIT: Final = 0xFFFFFFFF
_COUNT_LIMIT: Final = 0xFFFF
_UTF8_NAME: Final = 0x800
_ENCRYPTED: Final = 0x1
_COPY_BUFFER: Final = 1 << 20


class DeflateSpool:
    """A writable stream deflated into an anonymous temp file, counting CRC and sizes."""

    def __init__(self, directory: Path, level: int) -> None:
        # Anonymous (unlinked at once where the OS allows), mode 0600: it holds personal data.
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.crc = 0
        self.size = 0
        self.compressed_size = 0

    def write(self, data: bytes) -> int:
        """Deflate and spool `data`."""
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self._spill(self._compressor.compress(data))
        return len(data)

    def finish(self) -> None:
        """Flush the compressor; the spool is ready for `ZipWriter.add_spool`."""
        self._spill(self._compressor.flush())

    def close(self) -> None:
        """Drop the spool."""
        self.file.close()

    def _spill(self, chunk: bytes) -> None:
        if chunk:
            self.file.write(chunk)
            self.compressed_size += len(chunk)


class ZipWriter:
    """Writes a ZIP archive to `stream`, one whole entry at a time."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._out = stream
        self._offset = 0
        self._central: list[bytes] = []

    def add_copy(self, source: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        """Copy entry `info` of `source` with its compressed bytes unchanged."""
        if info.flag_bits & _ENCRYPTED:
            raise zipfile.BadZipFile(f"entry {info.filename!r} is encrypted")
        fp = source.fp
        if fp is None:
            raise ValueError("the source archive is closed")
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL.size)
        if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for entry {info.filename!r}")
        name_length, extra_length = struct.unpack("<2H", header[26:30])
        fp.seek(info.header_offset + _LOCAL.size + name_length + extra_length)
        self._header(
            info.filename, info, info.compress_type, info.CRC, info.compress_size, info.file_size
        )
        remaining = info.compress_size
        while remaining:
            chunk = fp.read(min(remaining, _COPY_BUFFER))
            if not chunk:
                raise zipfile.BadZipFile(f"entry {info.filename!r} is truncated")
            self._write(chunk)
            remaining -= len(chunk)

    def add_bytes(self, name: str, data: bytes, like: zipfile.ZipInfo, level: int = 6) -> None:
        """Add `data` as entry `name` (deflated, or stored if `like` was stored)."""
        if like.compress_type == zipfile.ZIP_STORED:
            method, payload = zipfile.ZIP_STORED, data
        else:
            compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
            method, payload = zipfile.ZIP_DEFLATED, compressor.compress(data) + compressor.flush()
        self._header(name, like, method, zlib.crc32(data), len(payload), len(data))
        self._write(payload)

    def add_spool(self, name: str, spool: DeflateSpool, like: zipfile.ZipInfo) -> None:
        """Add the content of a finished `DeflateSpool` as entry `name`."""
        self._header(name, like, zipfile.ZIP_DEFLATED, spool.crc, spool.compressed_size, spool.size)
        spool.file.seek(0)
        shutil.copyfileobj(spool.file, self._out, _COPY_BUFFER)
        self._offset += spool.compressed_size

    def close(self) -> None:
        """Write the central directory (the archive is complete after this)."""
        start = self._offset
        for record in self._central:
            self._write(record)
        size, count = self._offset - start, len(self._central)
        if count >= _COUNT_LIMIT or size >= _LIMIT or start >= _LIMIT:
            end64 = self._offset
            self._write(_END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
            self._write(_LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1))
            count, size, start = min(count, _COUNT_LIMIT), min(size, _LIMIT), min(start, _LIMIT)
        self._write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))
        self._out.flush()

    def _header(
        self, name: str, like: zipfile.ZipInfo, method: int, crc: int, csize: int, size: int
    ) -> None:
        """Write a local header and remember the central directory record of the entry."""
        encoded, flags = _name(name)
        time, date = _dos_time(like.date_time)
        offset = self._offset
        big = csize >= _LIMIT or size >= _LIMIT
        version = 45 if big or offset >= _LIMIT else (20 if method else 10)
        local_extra = struct.pack("<2H2Q", 1, 16, size, csize) if big else b""
        self._write(
            _LOCAL.pack(
                b"PK\x03\x04",
                version,
                flags,
                method,
                time,
                date,
                crc,
                _LIMIT if big else csize,
                _LIMIT if big else size,
                len(encoded),
                len(local_extra),
            )
            + encoded
            + local_extra
        )
        wide = [value for value in (size, csize, offset) if value >= _LIMIT]
        central_extra = struct.pack(f"<2H{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
        self._central.append(
            _CENTRAL.pack(
                b"PK\x01\x02",
                (like.create_system << 8) | version,
                version,
                flags,
                method,
                time,
                date,
                crc,
                min(csize, _LIMIT),
                min(size, _LIMIT),
                len(encoded),
                len(central_extra),
                0,
                0,
                like.internal_attr,
                like.external_attr,
                min(offset, _LIMIT),
            )
            + encoded
            + central_extra
        )

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)


def _name(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), _UTF8_NAME


def _dos_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    if year < 1980:
        year, month, day, hour, minute, second = 1980, 1, 1, 0, 0, 0
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day
