"""One text encoding for a whole CSV file, chosen from what the whole file says.

A few bytes must not decide how a file is read: one stray byte in a GBK export once made a
detector pick a Cyrillic code page for the whole file, and every name was sent as garbage.
So the whole file is streamed (it may be gigabytes; memory stays at one chunk) and judged:

1. A BOM names the encoding (a UTF-8 BOM is still checked like any UTF-8 file).
2. A ZIP or OLE2 container, or a file where more than 1 % of the bytes (and more than 16)
   are control bytes, is no text and is refused; a BOM-less UTF-16 file is recognised by its
   NULs (every other byte).
3. Strict UTF-8 over the whole file.
4. Otherwise every line with non-ASCII bytes is measured under UTF-8 and under GB18030 (GBK and
   GB2312 are subsets): bad spots (bytes that do not decode) against good characters. A file
   that is *mostly* one of them (at most a handful of bad spots, or 1 %, and at least four good
   characters per bad spot) is read as that one with the bad bytes replaced by U+FFFD, and
   `Decoding.damaged` says so; the reader then reports the damaged cells, and those rows are
   never sent. In a GB18030 file, a line that is valid UTF-8 and reads as rare characters
   under GB18030 is UTF-8 pasted in (张三 would become 寮犱笁): it counts as bad too and its
   non-ASCII bytes are read as damaged (`Decoding.foreign`), not as garbage text.
   A GB18030 reading must also look like Chinese: at least half its characters common ones
   (GB2312); Latin-1 text can decode as GB18030 ("Mü" is a GBK pair) but only as rare ones.
5. Only then charset-normalizer, on the lines that failed; its answer counts only when it is
   plausible and decodes the whole file: never when the file holds more valid multi-byte
   UTF-8 than chance gives (real UTF-8 text: the file mixes encodings); a Latin code page
   when its non-ASCII text is Latin letters and common signs, mostly one at a time ("Müller",
   not "ÕÅÈý"); another code page only where GB18030 fails on more than half the text and it
   reads as letters (never half-width katakana, the mark of Latin-1 read as cp932).
6. Nothing fits: `InputError` naming the problem, the first bad line and `--encoding`.

NUL bytes are kept as U+0000 in the cells they fall in and count as damage (one NUL in a cell
is a damaged text file; many NULs make a binary file, wherever they are).
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from batch_enricher.errors import InputError

#: Bytes read at a time while judging a file (a line longer than this is judged in pieces).
CHUNK: Final = 1 << 20
#: A bad-spot count this small always counts as "a few" ...
HANDFUL: Final = 5
#: ... as does one bad spot per this many good characters, if there are also enough good ones:
BAD_PER_GOOD: Final = 100
MIN_GOOD_PER_BAD: Final = 4
#: A GB18030 reading must have at least this share of common (GB2312) characters.
MIN_COMMON_SHARE: Final = 0.5
#: More control bytes than this share of the file (and more than `FEW_CONTROLS`): binary.
MAX_CONTROL_SHARE: Final = 0.01
FEW_CONTROLS: Final = 16
#: How many failing lines charset-normalizer gets to look at.
DETECTOR_SAMPLE: Final = 256 * 1024

ZIP_MAGIC: Final = b"PK\x03\x04"
OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# UTF-32 before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 controls that text files do not hold (tab, LF, VT, FF, CR, SUB and ESC are allowed).
_CONTROL_BYTES: Final = bytes([*range(0x00, 0x09), *range(0x0E, 0x1A), 0x1C, 0x1D, 0x1E, 0x1F])
_NOT_CONTROL: Final = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
# Non-ASCII bytes of a foreign line become 0xFF, which neither UTF-8 nor GB18030 decodes.
_BLANK_HIGH: Final = bytes(range(128)) + b"\xff" * 128
# Latin code pages a detector may name (as `codecs.lookup` names them); cp1252 goes first.
_LATIN_CODECS: Final = frozenset(
    codecs.lookup(name).name
    for name in (
        "cp1252",
        "latin_1",
        "iso8859_15",
        "cp1250",
        "iso8859_2",
        "cp850",
        "mac_roman",
        "cp1257",
        "iso8859_4",
        "iso8859_10",
        "iso8859_13",
        "iso8859_3",
        "iso8859_9",
        "cp1254",
        "mac_latin2",
        "cp775",
    )
)
# Judged before the detector is asked (or never a plausible answer for a BOM-less text file).
_JUDGED: Final = frozenset(
    codecs.lookup(name).name
    for name in (
        "utf_8",
        "gb18030",
        "gbk",
        "gb2312",
        "ascii",
        "hz",
        "utf_16",
        "utf_16_le",
        "utf_16_be",
        "utf_32",
        "utf_32_le",
        "utf_32_be",
        "utf_7",
    )
)
_NON_ASCII_BYTES: Final = re.compile(rb"[\x80-\xff]+")
# Three or more non-ASCII characters in a row.
_NON_ASCII_RUN: Final = re.compile(r"[^\x00-\x7f]{3,}")
# Signs common in Western text, besides letters.
_LATIN_SIGNS: Final = frozenset("©®°±·€£¥§¶«»–—‘’‚“”„…•²³×÷½¼¾¡¿ ")


@dataclass(frozen=True)
class Decoding:
    """How a text file is read: the codec and, when some bytes do not decode, where."""

    codec: str  # a Python codec name, for open()
    label: str  # how messages name it: "UTF-8", "GB18030", "cp1252", ...
    damaged: bool = False  # read with U+FFFD for bad bytes, or holds NULs
    first_damage: int | None = None  # physical line of the first damage, 1-based
    #: byte spans (start, end) of lines read as damaged although they decode (UTF-8 lines in a
    #: GB18030 file)
    foreign: tuple[tuple[int, int], ...] = ()

    @property
    def errors(self) -> str:
        """The `errors=` to open the file with."""
        return "replace" if self.damaged else "strict"


def choose(path: Path) -> Decoding:
    """Choose the encoding of a CSV/TSV file from the whole file (see the module docstring)."""
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            if codec == "utf-8-sig":
                return _judge(path, bom=True)
            return Decoding(codec, codec.upper())
    if head.startswith(ZIP_MAGIC):
        raise InputError(f"{path} is a ZIP/XLSX file, not CSV text (rename it to .xlsx?)")
    if head.startswith(OLE2_MAGIC):
        raise InputError(f"{path} is an XLS or encrypted Office file, not CSV text")
    utf16 = _bomless_utf16(head)
    if utf16 is not None:
        if _decodes_strictly(path, utf16):
            return Decoding(utf16, "UTF-16")
        raise _binary(path)
    if _binary_share(len(head.translate(None, _NOT_CONTROL)), len(head), 10 * MAX_CONTROL_SHARE):
        raise _binary(path)  # no need to read gigabytes of a binary file to know
    return _judge(path, bom=False)


def open_text(path: Path, decoding: Decoding) -> IO[str]:
    """Open the file as text the way `decoding` says (newline="" for the csv module)."""
    raw: io.RawIOBase = io.FileIO(path, "r")
    if decoding.foreign:
        raw = _Blanked(raw, decoding.foreign)
    buffered = io.BufferedReader(raw, buffer_size=CHUNK)
    return io.TextIOWrapper(buffered, encoding=decoding.codec, errors=decoding.errors, newline="")


def _binary_share(controls: int, size: int, share: float = MAX_CONTROL_SHARE) -> bool:
    """Too many control bytes for text (a few NULs in a small file are a damaged cell)."""
    return controls > max(FEW_CONTROLS, share * size)


def _binary(path: Path) -> InputError:
    return InputError(f"{path} is a binary file, not CSV text (it is full of control bytes)")


def _bomless_utf16(head: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when NULs fill every other byte of the head, else None."""
    nuls = head.count(0)
    if len(head) < 4 or nuls < 0.2 * len(head):
        return None
    odd = head[1::2].count(0)
    if odd >= 0.9 * nuls:
        return "utf-16-le"
    if nuls - odd >= 0.9 * nuls:
        return "utf-16-be"
    return None


def _decodes_strictly(path: Path, codec: str) -> bool:
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class _Tally:
    """One codec's record over the non-ASCII text of a file."""

    good: int = 0  # non-ASCII characters decoded
    bad: int = 0  # bad spots (bytes that do not decode; the non-ASCII runs of foreign lines)
    first_bad: int | None = None  # physical line, 1-based
    common: int = 0  # of the good characters, those in GB2312 (GB18030 only)

    def mostly(self) -> bool:
        """Decodes with at most a few bad spots, among plenty of good characters."""
        few = self.bad <= max(HANDFUL, self.good // BAD_PER_GOOD)
        return few and self.good >= MIN_GOOD_PER_BAD * self.bad

    def looks_chinese(self) -> bool:
        return self.common >= MIN_COMMON_SHARE * self.good


@dataclass
class _Measure:
    utf8: _Tally = field(default_factory=_Tally)
    gb: _Tally = field(default_factory=_Tally)
    foreign: list[tuple[int, int]] = field(default_factory=list)  # byte spans of UTF-8 lines
    first_utf8_line: int | None = None  # a line with non-ASCII text that is valid UTF-8
    controls: int = 0
    nuls: int = 0
    first_nul: int | None = None
    size: int = 0
    sample: bytearray = field(default_factory=bytearray)  # non-ASCII lines, for the detector


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of consecutive pieces of the file that end at a line break."""
    offset, carry = 0, b""
    with path.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            data = carry + chunk
            if not chunk:
                if data:
                    yield offset, data
                return
            # Cut after the last line break (0x0A/0x0D are never part of a UTF-8 or GB18030
            # character), but not between the CR and LF of a CRLF; a line longer than a few
            # chunks is judged in pieces.
            end = len(data) - 1 if data.endswith(b"\r") else len(data)
            cut = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
            if cut <= 0:
                if len(data) < 4 * CHUNK:
                    carry = data
                    continue
                cut = len(data)
            carry = data[cut:]
            yield offset, data[:cut]
            offset += cut


def _non_ascii(text: str) -> int:
    return len(text) - len(text.encode("ascii", "ignore"))


def _common(text: str) -> int:
    """How many characters of `text` are in GB2312 (the common Chinese characters)."""
    return (len(text.encode("gb2312", "ignore")) - len(text.encode("ascii", "ignore"))) // 2


def _measure(path: Path) -> _Measure:
    """Tally the non-ASCII text under UTF-8 and GB18030; count control bytes and NULs.

    Whole pieces are decoded in C; only lines with valid non-ASCII UTF-8 (few, in a file
    that failed strict UTF-8) and the first failing line of each codec are looked at alone.
    """
    m = _Measure()
    lines_before = 0
    for offset, chunk in _chunks(path):
        lines = chunk.splitlines(keepends=True)
        m.size += len(chunk)
        controls = len(chunk) - len(chunk.translate(None, _CONTROL_BYTES))
        if controls:
            m.controls += controls
            if 0 in chunk:
                m.nuls += chunk.count(0)
                if m.first_nul is None:
                    m.first_nul = lines_before + _first_line(lines, lambda line: 0 in line)
        if not chunk.isascii():
            _tally_chunk(m, chunk, lines, offset, lines_before)
        lines_before += len(lines)
    return m


def _tally_chunk(m: _Measure, chunk: bytes, lines: list[bytes], offset: int, before: int) -> None:
    u_text = chunk.decode("utf-8", "replace")
    u_spots = u_text.count("\ufffd")
    m.utf8.good += _non_ascii(u_text) - u_spots
    m.utf8.bad += u_spots
    if u_spots and m.utf8.first_bad is None:
        m.utf8.first_bad = before + _first_line(lines, _not_utf8)
    g_text = chunk.decode("gb18030", "replace")
    g_spots = g_text.count("\ufffd")
    g_good = _non_ascii(g_text) - g_spots
    common = _common(g_text)
    first_gb_bad = None
    if g_spots and m.gb.first_bad is None:
        first_gb_bad = before + _first_line(lines, _not_gb18030)
    for number, line in enumerate(lines, start=before + 1):
        if line.isascii():
            offset += len(line)
            continue
        if len(m.sample) < DETECTOR_SAMPLE:
            m.sample += line
        u_line = line.decode("utf-8", "replace")
        if "\ufffd" not in u_line:
            m.first_utf8_line = m.first_utf8_line or number
            if _non_ascii(u_line) >= 2:
                g_line = line.decode("gb18030", "replace")
                g_chars = _non_ascii(g_line) - g_line.count("\ufffd")
                line_common = _common(g_line)
                if line_common * 2 < g_chars or "\ufffd" in g_line or _common_chinese(u_line):
                    # Valid UTF-8 that GB18030 reads as rare characters, or that UTF-8 reads as
                    # common Chinese: UTF-8 pasted in (张三 would read as 寮犱笁, 赵伟 as 璧典紵,
                    # two common characters of three). GBK bytes are valid UTF-8 by chance
                    # only in short runs, and nearly never as common Han (a run of 3n bytes,
                    # each third byte a UTF-8 lead E4-E9 in GBK's text). Its characters count
                    # as bad, not good.
                    m.foreign.append((offset, offset + len(line)))
                    g_good -= g_chars
                    common -= line_common
                    g_spots += len(_NON_ASCII_BYTES.findall(line))  # a bad spot per cell
                    first_gb_bad = min(first_gb_bad or number, number)
        offset += len(line)
    m.gb.good += g_good
    m.gb.bad += g_spots
    m.gb.common += common
    if m.gb.first_bad is None:
        m.gb.first_bad = first_gb_bad


def _common_chinese(text: str) -> bool:
    """Whether every non-ASCII character is a common (GB2312) Chinese character or sign.

    >>> _common_chinese("赵伟,1"), _common_chinese("璧典紵"), _common_chinese("Müller")
    (True, False, False)
    """
    chars = [ch for ch in text if ord(ch) > 127]
    return (
        bool(chars)
        and all("\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" for ch in chars)
        and _common(text) == len(chars)
    )


def _first_line(lines: list[bytes], bad: Callable[[bytes], bool]) -> int:
    """1-based index of the first line for which `bad` holds (there is one)."""
    return next(i for i, line in enumerate(lines, start=1) if bad(line))


def _not_utf8(line: bytes) -> bool:
    return "\ufffd" in line.decode("utf-8", "replace")


def _not_gb18030(line: bytes) -> bool:
    return "\ufffd" in line.decode("gb18030", "replace")


# --- deciding -----------------------------------------------------------------------------------


@dataclass
class _Scan:
    """The fast first look: is the whole file strict UTF-8, and how many control bytes."""

    utf8: bool = True
    size: int = 0
    controls: int = 0
    nuls: int = 0
    first_nul: int | None = None


def _scan_utf8(path: Path) -> _Scan:
    """Strict UTF-8 over the whole file in C-sized steps; stops at the first bad byte."""
    scan = _Scan()
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                scan.utf8 = False
                return scan
            scan.size += len(chunk)
            scan.controls += len(chunk) - len(chunk.translate(None, _CONTROL_BYTES))
            nul = chunk.find(0)
            if nul >= 0:
                scan.nuls += chunk.count(0)
                if scan.first_nul is None:
                    scan.first_nul = lines + chunk.count(b"\n", 0, nul) + 1
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        scan.utf8 = False  # a character cut off at the very end
    return scan


def _judge(path: Path, *, bom: bool) -> Decoding:
    codec = "utf-8-sig" if bom else "utf-8"
    scan = _scan_utf8(path)
    if scan.utf8:
        if _binary_share(scan.controls, scan.size):
            raise _binary(path)
        return Decoding(codec, "UTF-8", damaged=scan.nuls > 0, first_damage=scan.first_nul)
    m = _measure(path)
    if _binary_share(m.controls, m.size):
        raise _binary(path)
    nul_line = m.first_nul if m.nuls else None
    if m.utf8.mostly():
        first = _first(m.utf8.first_bad, nul_line)
        return Decoding(codec, "UTF-8", damaged=True, first_damage=first)
    gb = m.gb
    gb_fits = not bom and (gb.bad == 0 or gb.mostly())
    gb_reading = Decoding(
        "gb18030",
        "GB18030",
        damaged=gb.bad > 0 or m.nuls > 0,
        first_damage=_first(gb.first_bad, nul_line),
        foreign=tuple(m.foreign),
    )
    if gb_fits and gb.looks_chinese():
        return gb_reading
    if not bom:
        detected = _detected(path, m)
        if detected is not None:
            return detected
    if gb_fits:
        return gb_reading  # rare characters, but nothing else reads the file
    raise InputError(_refusal(path, m, bom=bom))


def _first(*lines: int | None) -> int | None:
    return min((line for line in lines if line is not None), default=None)


def _refusal(path: Path, m: _Measure, *, bom: bool) -> str:
    advice = "re-save it as UTF-8 (or pass --encoding if you know its encoding)"
    utf8 = m.utf8
    bad = utf8.first_bad
    share = utf8.good / max(utf8.good + utf8.bad, 1)
    if m.first_utf8_line is not None and (m.foreign or share >= 0.2):
        # Much of it is UTF-8 and much is not: two encodings in one file.
        utf8_line = m.first_utf8_line
        lines = (
            f"line {utf8_line} is UTF-8 but line {bad} is not"
            if bad is None or utf8_line < bad
            else f"line {bad} is not UTF-8 but line {utf8_line} is"
        )
        return f"{path} mixes text encodings ({lines}), so no one encoding reads it all; {advice}"
    if bom:
        return f"{path} starts with a UTF-8 BOM but line {bad} is not valid UTF-8; {advice}"
    gb_bad = m.gb.first_bad
    also = f", line {gb_bad} is not valid GB18030" if gb_bad is not None else ""
    return (
        f"{path}: cannot tell its text encoding: line {bad} is not valid UTF-8{also}, and no "
        f"other encoding reads it plausibly; {advice}"
    )


def _detected(path: Path, m: _Measure) -> Decoding | None:
    """A plausible answer from charset-normalizer (or cp1252) that decodes the whole file."""
    import charset_normalizer

    sample = bytes(m.sample)
    offered = (
        codecs.lookup(match.encoding).name for match in charset_normalizer.from_bytes(sample)
    )
    # cp1252 first among Latin code pages (the detector's order among them is arbitrary: they
    # differ in a few letters), and tried even when not offered: short Western text misleads it.
    candidates = ["cp1252", *(name for name in offered if name not in _JUDGED)]
    if m.utf8.good * MIN_GOOD_PER_BAD > m.utf8.bad:
        # More valid multi-byte UTF-8 than chance gives: real UTF-8 text is in the file, and
        # any code page would turn it into mojibake ("Ã©"). Mixed encodings: refused.
        return None
    half_gb = m.gb.good >= m.gb.bad  # then an Asian or Cyrillic code page is a guess too far
    for name in dict.fromkeys(candidates):
        try:
            text = sample.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
        if name in _LATIN_CODECS:
            if not _reads_as_latin(text):
                continue
        elif half_gb or not _reads_as_letters(text):
            continue
        if _decodes_strictly(path, name):
            return Decoding(name, name, damaged=m.nuls > 0, first_damage=m.first_nul)
    return None


def _reads_as_latin(text: str) -> bool:
    """Latin letters and common Western signs, mostly alone between ASCII letters.

    In Western text an accented letter rarely has another beside it ("Müller", "ção"); Chinese
    or Cyrillic bytes read through a Latin code page come out in runs ("ÕÅÈý", "Ìîñêâà").
    """
    chars = [ch for ch in text if ord(ch) > 127]
    fitting = sum(
        1 for ch in chars if ch in _LATIN_SIGNS or unicodedata.name(ch, "").startswith("LATIN ")
    )
    in_runs = sum(len(run) for run in _NON_ASCII_RUN.findall(text))
    return fitting >= 0.9 * len(chars) and in_runs <= 0.1 * len(chars)


def _reads_as_letters(text: str) -> bool:
    """Non-ASCII characters that are (nearly all) letters, none half-width katakana."""
    chars = [ch for ch in text if ord(ch) > 127]
    if any("\uff61" <= ch <= "\uff9f" for ch in chars):
        return False
    letters = sum(1 for ch in chars if unicodedata.category(ch)[0] in "LM")
    return letters >= 0.9 * len(chars)


class _Blanked(io.RawIOBase):
    """A raw file whose non-ASCII bytes inside the given spans read as 0xFF (undecodable)."""

    def __init__(self, raw: io.RawIOBase, spans: tuple[tuple[int, int], ...]) -> None:
        self._raw, self._spans, self._next, self._pos = raw, spans, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer) or 0
        start, end = self._pos, self._pos + n
        spans, i = self._spans, self._next
        while i < len(spans) and spans[i][1] <= start:
            i += 1
        self._next = i
        view = memoryview(buffer)
        while i < len(spans) and spans[i][0] < end:
            a, b = max(spans[i][0], start) - start, min(spans[i][1], end) - start
            view[a:b] = bytes(view[a:b]).translate(_BLANK_HIGH)
            i += 1
        self._pos = end
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()
