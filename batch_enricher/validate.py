"""Normalise and check a row's name, ID number and mobile before anything is paid for.

`check` turns three raw cells into a `Person` (normalised, ready to send) or an `Invalid`
(with the API's own error code and reason, plus an English detail). It rejects only on
certainties, as DESIGN.md "Local validation" asks:

ID number (281501)
    18 characters: 17 digits and a digit or X; the ISO 7064 MOD 11-2 check digit; a birth date
    that exists, is not before 1900 and not in the future anywhere (after today in UTC+14).
    A 15-digit legacy number is upgraded to 18 digits. An ID that Excel stored as a number
    (>= 16 digits as a numeric cell or as float text like "110101199003078000.0", text in
    scientific notation, or 18 digits ending "000" whose check digit fails) has lost the digits
    after the 15th and is flagged, never sent; a 15-digit one written "110101900307803.0" lost
    nothing and is read as its digits. There is no birth-place (region) check.
Name (281502)
    Not empty, at most 50 characters, no digits, no control characters, and no punctuation or
    symbols other than the middle dot "·", and the apostrophe, hyphen, period and single inner
    space of Latin-script names. That excludes every spreadsheet formula trigger (= + @ < > ...)
    and brackets, slashes, commas and the like. Any CJK ideograph (all extensions, compatibility
    ideographs, private-use code points used for rare characters) and any letter or combining
    mark is accepted; the API is the final judge.
    Middle dots: a run of them ("买买提··艾力") is one separator and becomes one "·"; a name
    that starts or ends with one ("·张三", "张三·") is rejected, since a part of the name is
    missing (cut off, or typed in another cell) and no guess of ours would be that person.
    A name may not start with "-", "." or "'" nor end with "-" either.
Mobile (281503)
    11 digits starting 13-19, nothing more: no number-range tables, they go stale.

Normalisation (also exposed as `normalise_idcard`, `normalise_mobile`, `normalise_name`):
    ID and mobile: NFKC (full-width to half-width), all whitespace and invisible characters
    (zero-width, soft hyphen, bidi marks) removed, a leading apostrophe, straight or curly
    (’ ‘, a spreadsheet "text" marker), removed. ID: x -> X, and a single hyphen or dash between
    two digits ("110101-19900307-803X") dropped; other characters are not guessed away.
    Mobile: separators (space, hyphens and dashes, "." and parentheses), a +86 / 0086 / (86) /
    86- country prefix and the trunk prefix 0 ("013812345678", "+86 (0)138 1234 5678") removed:
    no Chinese area code starts 01 other than 010, so 0 + 1[3-9] + 9 digits is a mobile.
    Name: canonical composition (NFC, so a decomposed "Nguyễn" is the same person) except for
    compatibility ideographs; full-width ASCII to half-width (not full NFKC, which would
    rewrite compatibility ideographs that people's names really use), look-alike middle dots
    to "·" (U+00B7), curly apostrophes and dash variants to ASCII. A name holding any CJK
    character loses all spaces, "." becomes "·" (the separator it stands for in minority
    names), and so does a hyphen or dash between two CJK characters ("买买提-艾力" ->
    "买买提·艾力"); a Latin-script name keeps its hyphens and single inner spaces
    ("Ayşe  Nur" -> "Ayşe Nur").

Reasons never hold a value (personal data); where a character is the problem they quote that
one character as it is in the cell, with its code point: "contains '／' (U+FF0F), which is not
allowed in names". Letters are not quoted (a name typed in the mobile column would show).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Final

from stdnum.iso7064 import mod_11_2

from batch_enricher.codes import INVALID_IDCARD, INVALID_MOBILE, INVALID_NAME, reason_of
from batch_enricher.columns import ColumnMap
from batch_enricher.models import Invalid, Person

# NOTE: stdnum.cn.ric.validate()/is_valid() are deliberately not used: they also reject IDs whose
# first six digits are missing from stdnum's birth-place (region) table, which goes stale as
# districts are created and renamed, and would reject real people. We check only the format,
# the birth date and the ISO 7064 MOD 11-2 check digit.

MAX_NAME_LENGTH: Final = 50

#: Look-alike characters written for the middle dot of minority and foreign names.
MIDDLE_DOTS: Final = "\u2022\u30fb\uff65\u2027\u2219\u22c5\u00b7\u0387\u16eb\u2e31\ua78f"
#: Hyphens, dashes and the minus sign, as typed or pasted between the parts of a name or number.
_DASHES: Final = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_NAME_TRANSLATION: Final[dict[int, str]] = {
    **{ord(c): "·" for c in MIDDLE_DOTS},
    **{ord(c): "'" for c in "\u2019\u2018\u02bc`\u00b4"},  # apostrophe look-alikes
    **{ord(c): "-" for c in _DASHES},
    # Full-width ASCII (U+FF01-U+FF5E) to ASCII, and the ideographic space to a space.
    **{code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)},
    0x3000: " ",
}

# Whitespace (Unicode-aware, incl. U+3000 and NBSP) and invisible characters that copy-paste
# and exports leave behind.
_INVISIBLE: Final = "\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE_RE: Final = re.compile(f"[{_INVISIBLE}]+")
_SPACE_RE: Final = re.compile(r"\s+")
# In an ID or mobile, also soft hyphens and the bidi marks Windows puts around a phone number
# copied from a contact card ("\u202a138...\u202c"): invisible, so the user sees a valid value.
# (In a name, a bidi override can disguise what is shown, so there it stays a reason to reject.)
_NUMBER_NOISE: Final = f"{_INVISIBLE}\u00ad\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_NUMBER_SPACE_RE: Final = re.compile(rf"[\s{_NUMBER_NOISE}]+")
_MOBILE_SEPARATORS_RE: Final = re.compile(rf"[\s{_NUMBER_NOISE}\-{_DASHES}.()]+")
# One hyphen or dash between two digits of an ID ("110101-19900307-803X"); anything else stays
# and is reported, so that junk is never read as a separator.
_ID_SEPARATOR_RE: Final = re.compile(rf"(?<=[0-9])[\-{_DASHES}](?=[0-9X])")
#: A spreadsheet "text" marker before an ID or mobile: the apostrophe, straight or curly.
_TEXT_MARKERS: Final = "'\u2019\u2018"
_COUNTRY_PREFIX_RE: Final = re.compile(r"^(?:\+86|0086)")
# A bare "86" is a country code only when exactly a mobile-length number follows (perhaps with
# the trunk 0 written after it, as in "86-0138...").
_BARE_86_RE: Final = re.compile(r"^86(?=0?1\d{10}$)")
# The domestic trunk prefix: a mobile dialled from another city was "0138...". No area code
# other than 010 starts 01, so 0 followed by a mobile-shaped number is certainly that mobile.
_TRUNK_ZERO_RE: Final = re.compile(r"^0(?=1[3-9][0-9]{9}$)")
_EXCEL_SCIENTIFIC_RE: Final = re.compile(r"^[0-9](?:\.[0-9]+)?E\+?[0-9]+$")
# A whole number written as a float ("13812345678.0", how pandas exports a float column).
_FLOAT_TEXT_RE: Final = re.compile(r"^([0-9]+)\.0+$")
_ID18_RE: Final = re.compile(r"^[0-9]{17}[0-9X]$")
_ID_CHARACTERS_RE: Final = re.compile(r"[0-9X]*")
_ID15_RE: Final = re.compile(r"^[0-9]{15}$")
_MOBILE_RE: Final = re.compile(r"^1[3-9][0-9]{9}$")

# CJK ideographs in every block and extension (planes 2 and 3 are wholly CJK, which also covers
# extensions newer than this Python's Unicode tables), compatibility ideographs, 〇, and the
# private-use areas where rare name characters live before they are encoded.
_CJK: Final = (
    "[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ue000-\uf8ff"
    "\U00020000-\U0003ffff\U000f0000-\U0010ffff]"
)
_CJK_RE: Final = re.compile(_CJK)
# Between two CJK parts of a name (spaces already gone), a run of hyphens, dashes and middle
# dots is the one separator those names have: "买买提-艾力", "买买提··艾力" -> "买买提·艾力".
_CJK_SEPARATOR_RE: Final = re.compile(f"(?<={_CJK})[-·]+(?={_CJK})")
_DOTS_RE: Final = re.compile("··+")
# CJK compatibility ideographs: NFC maps each to a unified ideograph, but registered names use
# them as they are, so canonical composition (of decomposed accents) skips them.
_COMPAT_IDEOGRAPHS_RE: Final = re.compile("([\uf900-\ufaff\U0002f800-\U0002fa1f])")
# Allowed besides letters, marks and CJK: "·" always; these only in Latin-script names.
_LATIN_NAME_PUNCTUATION: Final = frozenset(" '-.")
# Separators that cannot begin or end a name: something before or after them is missing.
_NOT_FIRST: Final = frozenset("-.'·")
_NOT_LAST: Final = frozenset("-·")

#: The time zone whose calendar date is ahead of every other's.
_LATEST_ZONE: Final = dt.timezone(dt.timedelta(hours=14))

_EXCEL_ROUNDED: Final = (
    "stored as a number by Excel, digits after the 15th are lost; export the column as text"
)
_NOT_TEXT: Final[dict[type, str]] = {
    bool: "is a TRUE/FALSE cell",
    dt.datetime: "is a date/time cell",
    dt.date: "is a date cell",
    dt.time: "is a time cell",
}


def normalise_idcard(value: str) -> str:
    """Half-width, no spaces or dashes between digit groups, upper-case X.

    >>> normalise_idcard(" １１０１０１-１９９００３０７-８０３ｘ ")
    '11010119900307803X'
    """
    text = _without_marker(_number_text_of(value).upper())
    return text if _ID_CHARACTERS_RE.fullmatch(text) else _ID_SEPARATOR_RE.sub("", text)


def normalise_mobile(value: str) -> str:
    """Half-width digits without separators, a mainland country prefix or the trunk 0.

    >>> normalise_mobile("+86 (0)138 1234-5678")
    '13812345678'
    """
    text = _without_marker(_MOBILE_SEPARATORS_RE.sub("", unicodedata.normalize("NFKC", value)))
    if _MOBILE_RE.match(text):  # the common case: nothing more to take off
        return text
    text = _BARE_86_RE.sub("", _COUNTRY_PREFIX_RE.sub("", text))
    return _TRUNK_ZERO_RE.sub("", text)


def normalise_name(value: str) -> str:
    """Canonical spelling of a name: see the module docstring for the rules.

    >>> normalise_name(" 买买提•艾力 ")
    '买买提·艾力'
    >>> normalise_name("买买提-艾力")
    '买买提·艾力'
    >>> normalise_name("  Ayşe   Nur ")
    'Ayşe Nur'
    """
    # Invisible marks go first, so that one inside a word does not split it with a space.
    text = _INVISIBLE_RE.sub("", _compose(value)).translate(_NAME_TRANSLATION)
    text = _SPACE_RE.sub(" ", text).strip()
    if _CJK_RE.search(text):
        text = text.replace(" ", "").replace(".", "·")
        if "-" in text or "·" in text:
            text = _CJK_SEPARATOR_RE.sub("·", text)
    return _DOTS_RE.sub("·", text) if "··" in text else text


def _number_text_of(value: str) -> str:
    """An ID or mobile cell's text half-width, without whitespace or invisible marks."""
    return _NUMBER_SPACE_RE.sub("", unicodedata.normalize("NFKC", value))


def _without_marker(text: str) -> str:
    """`text` without a leading spreadsheet text marker (an apostrophe, straight or curly)."""
    return text[1:] if text and text[0] in _TEXT_MARKERS else text


def _compose(text: str) -> str:
    """Canonical composition (NFC), except for CJK compatibility ideographs.

    Files saved on macOS often hold "Nguyễn" decomposed (e + combining marks): the same person,
    who must get the same spelling (one identity, one paid call) and the same length.
    """
    if unicodedata.is_normalized("NFC", text):
        return text
    parts = _COMPAT_IDEOGRAPHS_RE.split(text)  # odd positions hold the ideographs themselves
    return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))


# typed=True keeps 13812345678 (int) and 13812345678.0 (float) apart from the text, which matters
# for IDs: a numeric ID cell is judged differently from the same digits as text. The memo is the
# public function itself: a wrapper around it would cost one more Python call on every row.
@functools.lru_cache(maxsize=1 << 14, typed=True)
def check(realname: object, idcard: object, mobile: object) -> Person | Invalid:
    """Normalise and validate one row's cells (str, or int/float/bool/datetime/None from Excel).

    When several fields are bad, `error_code` is the first of ID, name, mobile and the reason
    lists each problem in that order, separated by " | ". Memoised: files repeat people a lot.

    >>> check("张三", "11010119900307803x", "+86 138 1234 5678")
    Person(realname='张三', idcard='11010119900307803X', mobile='13812345678')
    >>> check("张三", "110101199003078030", "13812345678").reason
    '身份证号格式错误: check digit should be X'
    """
    id_result = _check_idcard(idcard)
    name_result = _check_name(realname)
    mobile_result = _check_mobile(mobile)
    problems = [
        (code, result)
        for code, result in (
            (INVALID_IDCARD, id_result),
            (INVALID_NAME, name_result),
            (INVALID_MOBILE, mobile_result),
        )
        if isinstance(result, _Problem)
    ]
    if problems:
        reason = " | ".join(f"{reason_of(code)}: {problem.detail}" for code, problem in problems)
        return Invalid(error_code=problems[0][0], reason=reason)
    assert isinstance(id_result, str)
    assert isinstance(name_result, str)
    assert isinstance(mobile_result, str)
    return Person(realname=name_result, idcard=id_result, mobile=mobile_result)


def check_row(row: Sequence[object], columns: ColumnMap, width: int) -> Person | Invalid:
    """Check one row's three fields; a row with extra, non-empty cells gets a reason instead.

    Short rows are common (exports drop trailing empty cells): missing fields count as empty.

    >>> check_row(["张三", "11010119900307803X", "13812345678"], ColumnMap(0, 1, 2), 3).mobile
    '13812345678'
    """
    n = len(row)
    if n == width:  # the common case, kept to one call
        return check(row[columns.realname], row[columns.idcard], row[columns.mobile])
    if n > width and any(cell not in (None, "") for cell in row[width:]):
        return Invalid(
            None, f"row has {n} cells but the header has {width}; check the file's quoting"
        )
    fields = (columns.realname, columns.idcard, columns.mobile)
    return check(*(row[i] if i < n else None for i in fields))


class _Problem:
    """Why one field failed (English detail, never the value itself)."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def _number_text(value: int | float) -> str | None:
    """Digits of a whole, non-negative number cell, or None if it is not one."""
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    return str(value) if value >= 0 else None


def _cell_text(value: object) -> str | _Problem:
    """A non-numeric cell as text, or why it cannot hold a name, ID or mobile."""
    if value is None:
        return ""
    for kind, detail in _NOT_TEXT.items():
        if isinstance(value, kind):
            return _Problem(detail)
    return value if isinstance(value, str) else str(value)


def _check_idcard(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = _number_text(value)
        if digits is None:
            return _Problem("is a number cell that is not a whole number")
        if len(digits) >= 16:
            # A double holds 15 significant digits: the rest were rounded away.
            return _Problem(_EXCEL_ROUNDED)
        return _check_id_text(digits)
    raw = _cell_text(value)
    if isinstance(raw, _Problem):
        return raw
    text = normalise_idcard(raw)
    float_text = _FLOAT_TEXT_RE.match(text)
    if float_text:  # the digits of a number cell, exported as text: judged like that cell
        text = float_text[1]
        if len(text) >= 16:
            return _Problem(_EXCEL_ROUNDED)
    elif _EXCEL_SCIENTIFIC_RE.match(text):
        return _Problem(_EXCEL_ROUNDED)
    stray = None if _ID_CHARACTERS_RE.fullmatch(text) else _first_stray(text, "0123456789X")
    if stray is not None:
        return _Problem(
            f"contains {_quote(_cell_char(raw, stray, _id_fold))}; "
            "an ID is 17 digits and a digit or X"
        )
    return _check_id_text(text)


def _check_id_text(text: str) -> str | _Problem:
    if not text:
        return _Problem("empty")
    if len(text) == 15:
        return _upgrade_legacy(text)
    if len(text) != 18:
        return _Problem(f"must be 18 characters, got {len(text)}")
    if not _ID18_RE.match(text):
        return _Problem("must be 17 digits followed by a digit or X")
    date_problem = _birth_date_problem(text[6:14])
    if date_problem:
        return _Problem(date_problem)
    expected = mod_11_2.calc_check_digit(text[:17])
    if text[17] != expected:
        if text.endswith("000"):
            return _Problem(f"check digit fails and it ends in 000: probably {_EXCEL_ROUNDED}")
        return _Problem(f"check digit should be {expected}")
    return text


def _upgrade_legacy(text: str) -> str | _Problem:
    """A 15-digit (pre-1999) ID becomes 18 digits: century "19" inserted, check digit added."""
    if not _ID15_RE.match(text):
        return _Problem("a 15-character (old-style) ID must be all digits")
    date_problem = _birth_date_problem("19" + text[6:12])
    if date_problem:
        return _Problem(date_problem)
    body = text[:6] + "19" + text[6:]
    return body + mod_11_2.calc_check_digit(body)


def _birth_date_problem(yyyymmdd: str) -> str | None:
    shown = f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"
    try:
        born = dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        return f"birth date {shown} does not exist"
    if born.year < 1900:
        return f"birth date {shown} is before 1900"
    if born > _latest_today():
        return f"birth date {shown} is in the future"
    return None


def _latest_today() -> dt.date:
    """Today's date where it is latest (UTC+14): a birth date after it is certainly future.

    The machine's own date is not enough: a UTC server running at 01:00 in Beijing would call
    someone born that day in China "born in the future".
    """
    return dt.datetime.now(_LATEST_ZONE).date()


def _first_stray(text: str, allowed: str) -> str | None:
    """The first character of `text` not in `allowed` that may be quoted, or None.

    Letters and digits are never quoted: a letter may be part of a name typed in the wrong
    column, a digit part of a number. Punctuation and symbols hold no personal data.
    """
    for ch in text:
        if ch not in allowed and not ch.isalnum():
            return ch
    return None


def _id_fold(ch: str) -> str:
    """What normalising an ID or mobile makes of one character."""
    return unicodedata.normalize("NFKC", ch).upper()


def _cell_char(raw: str, ch: str, fold: Callable[[str], str]) -> str:
    """The first character of the cell `raw` that normalising turned into `ch`."""
    return next((c for c in raw if ch in fold(c)), ch)


def _check_name(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _Problem("contains digits")
    text = _cell_text(value)
    if isinstance(text, _Problem):
        return text
    name = normalise_name(text)
    if not name:
        return _Problem("empty")
    if len(name) > MAX_NAME_LENGTH:
        return _Problem(f"longer than {MAX_NAME_LENGTH} characters")
    latin = not _CJK_RE.search(name)
    has_letter = False
    for index, ch in enumerate(name):
        if _CJK_RE.match(ch):
            has_letter = True
            continue
        category = unicodedata.category(ch)
        if category[0] in "LM":
            has_letter = has_letter or category[0] == "L"
            continue
        if ch == "·" or (latin and ch in _LATIN_NAME_PUNCTUATION):
            continue
        return _Problem(_name_character_problem(ch, category, text, name, index))
    if not has_letter:
        return _Problem("contains no letters")
    for end, allowed, at in (("starts", _NOT_FIRST, 0), ("ends", _NOT_LAST, -1)):
        if name[at] in allowed:
            shown = _quote(_visible(text)[at])
            why = "; a middle dot only goes between two parts of a name" if name[at] == "·" else ""
            return _Problem(f"{end} with {shown}{why}")
    return name


def _name_character_problem(ch: str, category: str, raw: str, name: str, index: int) -> str:
    if category[0] == "N":
        return "contains digits"
    if category in ("Cc", "Cf", "Cs"):
        return f"contains a control character (U+{ord(ch):04X})"
    if category == "Cn":
        return f"contains an unassigned character (U+{ord(ch):04X})"
    shown = _quote(_name_source(raw, name, index))
    return f"contains {shown}, which is not allowed in names"


def _quote(ch: str) -> str:
    """One character as a reason shows it: quoted, with its code point (never a whole value)."""
    return f"'{ch}' (U+{ord(ch):04X})"


def _visible(raw: str) -> str:
    """A cell's text without the whitespace and invisible marks that normalising drops."""
    return _SPACE_RE.sub("", _INVISIBLE_RE.sub("", raw))


def _name_fold(ch: str) -> str:
    """What normalising a name makes of one character (before the rules that need context)."""
    return _compose(ch).translate(_NAME_TRANSLATION)


def _name_source(raw: str, name: str, index: int) -> str:
    """The character of the cell `raw` that became `name[index]` (a punctuation or symbol).

    Normalising maps such characters one for one (full-width to ASCII, look-alikes to their
    model) and drops only spaces, invisible marks and the dashes between CJK parts; so the n-th
    `name[index]` comes from the n-th cell character that folds to it and was not dropped.
    """
    target = name[index]
    nth = name.count(target, 0, index)
    pairs = [(c, f) for c in _visible(raw) for f in _name_fold(c)]
    folded = "".join(f for _, f in pairs)
    dropped: set[int] = set()
    if _CJK_RE.search(name):
        folded = folded.replace(".", "·")
        for match in _CJK_SEPARATOR_RE.finditer(folded):
            dropped.update(range(*match.span()))
    sources = [c for i, (c, _) in enumerate(pairs) if folded[i] == target and i not in dropped]
    return sources[nth] if nth < len(sources) else target


def _check_mobile(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raw = _number_text(value)
        if raw is None:
            return _Problem("is a number cell that is not a whole number")
        text = normalise_mobile(raw)
    else:
        cell = _cell_text(value)
        if isinstance(cell, _Problem):
            return cell
        raw = cell
        # Scientific notation and a float's ".0" are read before "." is taken for a separator:
        # "1381234567.0" must not become the 11-digit 13812345670, someone else's number.
        compact = _without_marker(_number_text_of(raw).upper())
        if _EXCEL_SCIENTIFIC_RE.match(compact):
            return _Problem(
                "must be 11 digits starting 13-19; "
                "it is in scientific notation (a number formatted by Excel)"
            )
        text = normalise_mobile(_FLOAT_TEXT_RE.sub(r"\1", compact))
    if _MOBILE_RE.match(text):
        return text
    return _Problem(_mobile_problem(text, raw))


def _mobile_problem(text: str, raw: str) -> str:
    rule = "must be 11 digits starting 13-19"
    if not text:
        return "empty"
    stray = _first_stray(text, "0123456789")
    if stray is not None:
        return f"{rule}; contains {_quote(_cell_char(raw, stray, _id_fold))}"
    if not text.isascii() or not text.isdigit():  # letters, or another script's digits
        return f"{rule}, got characters other than digits"
    if len(text) != 11:
        return f"{rule}, got {len(text)} digits"
    return f"{rule}, got one starting {text[:2]}"
