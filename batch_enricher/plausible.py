"""Names that cannot be right for their file: the marks a wrong text encoding leaves.

The reader reads a file with one encoding; when that choice is wrong every non-ASCII name
comes out garbled in the same way, and a garbled name must never be sent (it is paid for).
This is the last guard, and it rejects only on certainties, judged by script:

- in any file: a character that could not be decoded (U+FFFD), a NUL, half-width katakana
  (Latin-1 bytes read as cp932: "©" becomes "ｩ"), box-drawing characters (bytes read as an
  old DOS code page), or letters of two alphabets in one name (Latin with Cyrillic or Greek:
  "Müller" read as cp1251 is "Mьller");
- in a file whose names are mostly Han: Cyrillic or Greek letters, and Latin-1 supplement
  characters other than the middle dot (GBK read as ISO-8859-5 or Latin-1 gives "ХЕИэ" or
  "ÕÅÈý" for 张三).

Real names pass: 张三, 买买提·艾力, JOHN SMITH; and in a file of Latin names, Ayşe Nur, Nguyễn
Văn An, José, Zoë. `profile` looks at a sample of a file's names; `implausible` judges one.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: How many names `profile` looks at.
SAMPLE: Final = 1000

# Code point ranges (first, last, script), sorted; characters outside them are "other".
_SCRIPTS: Final = (
    (0x0041, 0x005A, "latin"),
    (0x0061, 0x007A, "latin"),
    (0x0080, 0x009F, "latin1"),  # C1 controls
    (0x00A0, 0x00A0, "space"),  # no-break space, common in text copied from the web
    (0x00A1, 0x00B6, "latin1"),  # Latin-1 signs
    (0x00B7, 0x00B7, "dot"),  # the middle dot of 买买提·艾力
    (0x00B8, 0x00FF, "latin1"),  # more signs, and the Latin-1 letters (and × ÷)
    (0x0100, 0x024F, "latin"),  # Latin Extended-A and -B: Ayşe, Đức
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x1E00, 0x1EFF, "latin"),  # Latin Extended Additional: Nguyễn
    (0x1F00, 0x1FFF, "greek"),
    (0x2500, 0x259F, "box"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xF900, 0xFAFF, "han"),
    (0xFF61, 0xFF9F, "halfwidth"),
    (0xFFFD, 0xFFFD, "damaged"),
    (0x20000, 0x323AF, "han"),
)
_STARTS: Final = [first for first, _, _ in _SCRIPTS]
_ALPHABETS: Final = frozenset({"latin", "latin1", "greek", "cyrillic"})
# Scripts a name of a Han file cannot hold, and how a message calls them.
_NOT_IN_HAN_FILE: Final = {
    "cyrillic": "Cyrillic letters",
    "greek": "Greek letters",
    "latin1": "Latin-1 characters (such as Õ, Å, È, ý)",
}
_ALWAYS_WRONG: Final = {
    "damaged": "a character that could not be decoded (U+FFFD)",
    "halfwidth": "half-width katakana (such as ｩ)",
    "box": "box-drawing characters",
}
# Names made only of these need no closer look (the common case).
_PLAIN: Final = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u00b7\u3000\x20-\x7e]*")
_HAN: Final = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")
_ADVICE: Final = "the file was probably read in the wrong encoding (see --encoding)"


@dataclass(frozen=True)
class NameProfile:
    """What a file's names are written in."""

    han: bool  # most of them hold Han characters


def profile(names: Iterable[object], *, limit: int = SAMPLE) -> NameProfile:
    """Look at up to `limit` non-empty text names of a file.

    >>> profile(["张三", "李四", "JOHN SMITH"]).han
    True
    """
    seen = han = 0
    for name in names:
        if not isinstance(name, str) or not name.strip():
            continue
        seen += 1
        han += bool(_HAN.search(name))
        if seen >= limit:
            break
    return NameProfile(han=seen > 0 and 2 * han > seen)


def implausible(name: object, file: NameProfile) -> str | None:
    """Why `name` cannot be a real name in a file of this profile, or None if it can be.

    >>> implausible("ÕÅÈý", NameProfile(han=True)) is not None
    True
    >>> implausible("Ayşe Nur", NameProfile(han=False)) is None
    True
    """
    if not isinstance(name, str):
        return None
    if _PLAIN.fullmatch(name):
        return None
    if "\x00" in name:
        return f"holds a NUL byte: {_ADVICE}"
    scripts = {_script(ord(ch)) for ch in name}
    for script, what in _ALWAYS_WRONG.items():
        if script in scripts:
            return f"holds {what}: {_ADVICE}"
    if file.han:
        for script, what in _NOT_IN_HAN_FILE.items():
            if script in scripts:
                return f"holds {what} while the file's names are Chinese: {_ADVICE}"
    # Latin-1 letters are Latin letters here (José): only other alphabets count as a mix.
    alphabets = sorted({"latin" if s == "latin1" else s for s in scripts & _ALPHABETS})
    if len(alphabets) > 1:
        return f"mixes {' and '.join(a.capitalize() for a in alphabets)} letters: {_ADVICE}"
    return None


def _script(code: int) -> str:
    i = bisect.bisect_right(_STARTS, code) - 1
    if i >= 0:
        _, last, script = _SCRIPTS[i]
        if code <= last:
            return script
    return "other"
