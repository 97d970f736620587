"""Local validation: edge cases that were once wrong (see each test's docstring)."""

from __future__ import annotations

import datetime as dt
import os
import time
import unicodedata
from collections.abc import Iterator

import pytest

from batch_enricher.checkfile import problem_kind
from batch_enricher.models import Invalid, Person
from batch_enricher.validate import check, normalise_name

MOBILE = "13812345678"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _with_check_digit(body: str) -> str:
    """Independent oracle for GB 11643's check digit."""
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True)) % 11]


def _id_born(day: dt.date) -> str:
    return _with_check_digit(f"110101{day:%Y%m%d}001")


@pytest.fixture
def local_zone() -> Iterator[None]:
    """Run with the machine's clock in UTC-12, the earliest calendar date on Earth."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT+12"  # POSIX sign: GMT+12 is UTC-12
    time.tzset()
    check.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
        check.cache_clear()


@pytest.mark.usefixtures("local_zone")
def test_birth_date_that_is_today_somewhere_is_not_in_the_future() -> None:
    """A nightly cron job on a server in another time zone must not reject a person born today
    where they live: "future" is a certainty only past the latest calendar date on Earth."""
    latest_today = dt.datetime.now(dt.timezone(dt.timedelta(hours=14))).date()
    assert latest_today > dt.date.today()  # the machine's own date is behind
    assert isinstance(check("张三", _id_born(latest_today), MOBILE), Person)
    future = check("张三", _id_born(latest_today + dt.timedelta(days=1)), MOBILE)
    assert isinstance(future, Invalid)
    assert "in the future" in future.reason


def test_decomposed_name_is_the_same_person_as_composed() -> None:
    """Files saved on a Mac often hold names in NFD (e + combining marks): it is the same person
    as the NFC spelling, so it must normalise (and be sent, and deduplicated) identically."""
    composed = "Nguyễn Văn An"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert normalise_name(decomposed) == composed
    result = check(decomposed, _with_check_digit("11010119900307001"), MOBILE)
    assert isinstance(result, Person)
    assert result.realname == composed


def test_decomposed_name_of_fifty_letters_is_not_too_long() -> None:
    """The 50-character limit counts characters, not the code points of a decomposed spelling."""
    name = ("Nguyễn Văn An " * 4)[:50]
    assert len(name) == 50
    result = check(
        unicodedata.normalize("NFD", name), _with_check_digit("11010119900307001"), MOBILE
    )
    assert isinstance(result, Person), result


def test_composing_keeps_compatibility_ideographs() -> None:
    """Canonical composition must not rewrite CJK compatibility ideographs (U+F900, U+2F800),
    which NFC maps to other code points but people's registered names really use."""
    for name in ("\uf900李", "\U0002f800王", "\uf900e\u0301"):
        assert normalise_name(name)[0] == name[0]
    assert normalise_name("\uf900e\u0301") == "\uf900\u00e9"


@pytest.mark.parametrize(
    "mobile",
    [
        "\u202a+86 138 1234 5678\u202c",  # copied from a Windows/Outlook contact card
        "\u200e13812345678",  # left-to-right mark
        "\u2066138-1234-5678\u2069",  # isolate marks
        "138\u00ad1234\u00ad5678",  # soft hyphens
    ],
)
def test_invisible_format_marks_around_a_mobile_are_not_a_reason_to_reject(mobile: str) -> None:
    """Bidi and soft-hyphen marks are invisible: the user sees a valid mobile, so must we."""
    result = check("张三", _with_check_digit("11010119900307001"), mobile)
    assert isinstance(result, Person), result
    assert result.mobile == MOBILE


def test_invisible_format_marks_around_an_id_are_dropped() -> None:
    idcard = _with_check_digit("11010119900307001")
    result = check("张三", f"\u202a{idcard}\u00ad\u202c", MOBILE)
    assert isinstance(result, Person), result
    assert result.idcard == idcard


def test_a_zero_width_space_inside_a_latin_name_does_not_become_a_space() -> None:
    assert normalise_name("Jo\u200bhn O\ufeff'Brien") == "John O'Brien"


# --- found against other projects' ID and mobile test suites ----------------------------------

ID = _with_check_digit("11010119900307803")  # ends in X


@pytest.mark.parametrize(
    "written",
    [
        "110101-19900307-803X",
        "110101 19900307 803X",
        "110101－19900307－803X",  # full-width hyphen
        "110101–19900307–803x",  # en dash, lower-case x
        "1101-0119-9003-0780-3X",
    ],
)
def test_an_id_written_in_digit_groups_is_the_same_id(written: str) -> None:
    """Forms and CRMs show an ID in groups; the dashes or spaces between them are not part of it."""
    result = check("张三", written, MOBILE)
    assert isinstance(result, Person), result
    assert result.idcard == ID


@pytest.mark.parametrize(
    ("written", "quoted"),
    [
        ("110101--19900307803X", "'-' (U+002D)"),  # a doubled dash is not a separator
        ("-11010119900307803X", "'-' (U+002D)"),  # nor one before the first digit
        ("11010119900307803X-", "'-' (U+002D)"),
        ("110101/19900307/803X", "'/' (U+002F)"),
        ("110101_19900307_803X", "'_' (U+005F)"),
    ],
)
def test_junk_in_an_id_is_not_taken_for_a_separator(written: str, quoted: str) -> None:
    result = check("张三", written, MOBILE)
    assert isinstance(result, Invalid)
    assert (
        result.reason == f"身份证号格式错误: contains {quoted}; an ID is 17 digits and a digit or X"
    )


def test_a_15_digit_id_exported_as_float_text_is_read_as_that_id() -> None:
    """A 15-digit number fits in a float: "110101900307803.0" lost nothing, like the number cell."""
    for written in ("110101900307803.0", "110101900307803.00", " 110101900307803.0 "):
        result = check("张三", written, MOBILE)
        assert isinstance(result, Person), result
        assert result.idcard == ID  # upgraded to 18 digits, as the number cell is
    assert check("张三", written, MOBILE) == check("张三", 110101900307803.0, MOBILE)


@pytest.mark.parametrize(
    "written", ["110101199003078000.0", "110101199003078032.0", "1101011990030780.0"]
)
def test_a_longer_id_exported_as_float_text_is_flagged_as_rounded_never_sent(written: str) -> None:
    result = check("张三", written, MOBILE)
    assert isinstance(result, Invalid)
    assert "digits after the 15th are lost" in result.reason


@pytest.mark.parametrize("marker", ["'", "\u2019", "\u2018", "\uff07"])
def test_a_text_marker_apostrophe_before_an_id_or_mobile_is_dropped(marker: str) -> None:
    """Word and some exports turn the "text" apostrophe curly (’ ‘); it is still only a marker."""
    result = check("张三", marker + ID, marker + "138 1234 5678")
    assert isinstance(result, Person), result
    assert (result.idcard, result.mobile) == (ID, MOBILE)
    float_text = check("张三", ID, marker + "13812345678.0")
    assert isinstance(float_text, Person) and float_text.mobile == MOBILE


def test_only_one_leading_marker_is_dropped() -> None:
    assert isinstance(check("张三", "’’" + ID, MOBILE), Invalid)
    assert isinstance(check("张三", ID[:6] + "’" + ID[6:], MOBILE), Invalid)


@pytest.mark.parametrize(
    "written",
    [
        "013812345678",
        "0138 1234 5678",
        "+86 (0)138 1234 5678",
        "+86 0138 1234 5678",
        "86-0138-1234-5678",
        "0086 0138 1234 5678",
        "（0）１３８１２３４５６７８",  # full-width
    ],
)
def test_a_mobile_written_with_the_trunk_zero_is_that_mobile(written: str) -> None:
    result = check("张三", ID, written)
    assert isinstance(result, Person), result
    assert result.mobile == MOBILE


@pytest.mark.parametrize(
    ("written", "detail"),
    [
        ("012812345678", "got 12 digits"),  # 0 + something that is no mobile: not stripped
        ("0138123456789", "got 13 digits"),
        ("00138123456789", "got 14 digits"),  # one zero only
        ("0101234567", "got 10 digits"),  # a Beijing landline
    ],
)
def test_a_leading_zero_is_dropped_only_before_a_mobile(written: str, detail: str) -> None:
    result = check("张三", ID, written)
    assert isinstance(result, Invalid)
    assert result.reason == f"手机号格式错误: must be 11 digits starting 13-19, {detail}"


@pytest.mark.parametrize(
    "written",
    [
        "买买提-艾力",
        "买买提—艾力",
        "买买提－艾力",
        "买买提 - 艾力",
        "买买提--艾力",
        "买买提‐艾力",
        "买买提−艾力",
    ],
)
def test_a_hyphen_or_dash_between_han_parts_is_the_middle_dot(written: str) -> None:
    result = check(written, ID, MOBILE)
    assert isinstance(result, Person), result
    assert result.realname == "买买提·艾力"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("Jean-Pierre", "Jean-Pierre"),
        ("Jean—Pierre", "Jean-Pierre"),
        ("Anne-Marie O'Neil", "Anne-Marie O'Neil"),
    ],
)
def test_latin_names_keep_their_hyphen(written: str, expected: str) -> None:
    result = check(written, ID, MOBILE)
    assert isinstance(result, Person), result
    assert result.realname == expected


def test_a_hyphen_that_is_not_between_han_parts_stays_a_reason_to_reject() -> None:
    for written in ("-买买提", "买买提-Ali", "买买提-3"):
        result = check(written, ID, MOBILE)
        assert isinstance(result, Invalid), written


@pytest.mark.parametrize(
    "written", ["买买提··艾力", "买买提·•艾力", "买买提 · · 艾力", "买买提.·艾力", "买买提·-艾力"]
)
def test_doubled_middle_dots_are_one_separator(written: str) -> None:
    result = check(written, ID, MOBILE)
    assert isinstance(result, Person), result
    assert result.realname == "买买提·艾力"
    assert normalise_name("Jean··Pierre") == "Jean·Pierre"


@pytest.mark.parametrize(
    ("written", "detail"),
    [
        ("·张三", "starts with '·' (U+00B7)"),
        ("••张三", "starts with '•' (U+2022)"),  # as in the cell, not as normalised
        (" ・买买提", "starts with '・' (U+30FB)"),
        ("张三·", "ends with '·' (U+00B7)"),
        ("买买提艾力··", "ends with '·' (U+00B7)"),
        ("张三. ", "ends with '.' (U+002E)"),  # a full stop in a Han name is the middle dot
    ],
)
def test_a_name_cut_at_a_middle_dot_is_rejected_with_the_dot_quoted(
    written: str, detail: str
) -> None:
    """A part of the name is missing (cut off, or in another cell): no guess is that person."""
    result = check(written, ID, MOBILE)
    assert isinstance(result, Invalid)
    assert result.reason == (
        f"姓名格式错误: {detail}; a middle dot only goes between two parts of a name"
    )


def test_a_latin_name_ending_in_a_hyphen_is_rejected() -> None:
    result = check("Smith-", ID, MOBILE)
    assert isinstance(result, Invalid)
    assert result.reason == "姓名格式错误: ends with '-' (U+002D)"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            ("张三／李四", ID, MOBILE),
            "姓名格式错误: contains '／' (U+FF0F), which is not allowed in names",
        ),
        (
            ("张三;", ID, MOBILE),
            "姓名格式错误: contains ';' (U+003B), which is not allowed in names",
        ),
        (
            ("张'三", ID, MOBILE),
            "姓名格式错误: contains ''' (U+0027), which is not allowed in names",
        ),
        (
            ("张三", "110101＃19900307803X", MOBILE),
            "身份证号格式错误: contains '＃' (U+FF03); an ID is 17 digits and a digit or X",
        ),
        (
            ("张三", ID, "138／1234／5678"),
            "手机号格式错误: must be 11 digits starting 13-19; contains '／' (U+FF0F)",
        ),
        (
            ("张三", ID, "+1 415 555 0100"),
            "手机号格式错误: must be 11 digits starting 13-19; contains '+' (U+002B)",
        ),
    ],
)
def test_reasons_quote_the_character_as_it_is_in_the_cell(
    row: tuple[str, str, str], reason: str
) -> None:
    """The user searches the sheet for the character: a full-width '／' must not be shown as '/'."""
    result = check(*row)
    assert isinstance(result, Invalid)
    assert result.reason == reason


def test_the_quoted_character_is_the_one_that_is_wrong() -> None:
    # The em dash between Han parts is a separator; the hyphen before "Ali" is the problem.
    result = check("买买提—艾力-Ali", ID, MOBILE)
    assert isinstance(result, Invalid)
    assert "contains '-' (U+002D)" in result.reason


@pytest.mark.parametrize(
    ("row", "secret"),
    [
        (("张三", ID, "王小明"), "王"),  # a name in the mobile column
        (("张三", ID, "1381234567a"), "a"),
        (("张三", "11010119900307803Y", MOBILE), "Y"),
        (("张三", "王小明", MOBILE), "王"),
        (("张三", ID, "١٣٨١٢٣٤٥٦٧٨"), "١"),  # another script's digits
    ],
)
def test_reasons_never_quote_a_letter_or_digit_of_the_value(
    row: tuple[str, str, str], secret: str
) -> None:
    result = check(*row)
    assert isinstance(result, Invalid)
    assert f"'{secret}'" not in result.reason
    assert "U+" not in result.reason


def test_problems_with_quoted_characters_are_counted_as_one_kind() -> None:
    """`validate` counts rows by problem: the quoted character is folded, whatever it is."""
    names = ("张三／李四", "张三;", "张'三", "张三(先生)", '张三"', "'张三", "张三\\")
    kinds = {problem_kind(_reason(name)) for name in names}
    assert kinds == {"姓名格式错误: contains …, which is not allowed in names"}
    both = _reason("张'三", mobile="138/1234")
    assert problem_kind(both) == (
        "姓名格式错误: contains …, which is not allowed in names"
        " | 手机号格式错误: must be 11 digits starting 13-19; contains …"
    )
    assert {problem_kind(_reason(n)) for n in ("·张三", "张三•")} == {
        "姓名格式错误: starts with …; a middle dot only goes between two parts of a name",
        "姓名格式错误: ends with …; a middle dot only goes between two parts of a name",
    }


def _reason(name: str, mobile: str = MOBILE) -> str:
    result = check(name, ID, mobile)
    assert isinstance(result, Invalid), result
    return result.reason
