"""Local validation: what is normalised, what is rejected and why, before anything is paid for."""

from __future__ import annotations

import datetime as dt

import pytest

from batch_enricher.codes import INVALID_IDCARD, INVALID_MOBILE, INVALID_NAME
from batch_enricher.models import Invalid, Person
from batch_enricher.validate import (
    check,
    normalise_idcard,
    normalise_mobile,
    normalise_name,
)

NAME = "张三"
ID = "11010119900307803X"
MOBILE = "13812345678"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _check_digit(body: str) -> str:
    """Independent oracle for GB 11643's check digit (not the code under test)."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True)) % 11]


def _invalid(result: Person | Invalid) -> Invalid:
    assert isinstance(result, Invalid), result
    return result


def _person(result: Person | Invalid) -> Person:
    assert isinstance(result, Person), result
    return result


def test_oracle_agrees_with_known_ids() -> None:
    assert _check_digit(ID[:17]) == "X"
    assert _check_digit("44052419800101001") == "3"


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (ID, ID),
        (ID.lower(), ID),
        (" 110101 19900307 803x ", ID),
        ("\u3000" + ID + "\u00a0", ID),
        ("１１０１０１１９９００３０７８０３Ｘ", ID),  # full-width digits and X
        ("１１０１０１１９９００３０７８０３ｘ", ID),
        ("'" + ID, ID),  # spreadsheet text marker
        ("\ufeff" + ID + "\u200b", ID),
    ],
)
def test_normalise_idcard(raw: str, expected: str) -> None:
    assert normalise_idcard(raw) == expected
    assert _person(check(NAME, raw, MOBILE)).idcard == expected


@pytest.mark.parametrize(
    "raw",
    [
        "13812345678",
        "+8613812345678",
        "+86 138 1234 5678",
        "0086 138-1234-5678",
        "86-13812345678",
        "(86)13812345678",
        "(+86) 138 1234 5678",
        "8613812345678",
        "138.1234.5678",
        "(138) 1234 5678",
        "１３８１２３４５６７８",  # full-width
        "＋８６　１３８１２３４５６７８",  # full-width plus and ideographic space
        "'+86 138 1234 5678",  # an earlier CSV output, formula-escaped
        "\t13812345678\u00a0",
    ],
)
def test_normalise_mobile(raw: str) -> None:
    assert normalise_mobile(raw) == MOBILE
    assert _person(check(NAME, ID, raw)).mobile == MOBILE


def test_bare_86_is_kept_unless_a_mobile_follows() -> None:
    # "86" followed by 9 digits is not a country code: nothing to strip, and it is rejected.
    assert normalise_mobile("86123456789") == "86123456789"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("张三", "张三"),
        (" 张 三 ", "张三"),
        ("张\u3000三", "张三"),
        ("买买提•艾力", "买买提·艾力"),  # U+2022 bullet
        ("买买提・艾力", "买买提·艾力"),  # U+30FB katakana middle dot
        ("买买提･艾力", "买买提·艾力"),  # U+FF65 half-width katakana middle dot
        ("买买提‧艾力", "买买提·艾力"),  # U+2027 hyphenation point
        ("买买提∙艾力", "买买提·艾力"),  # U+2219 bullet operator
        ("买买提⋅艾力", "买买提·艾力"),  # U+22C5 dot operator
        ("买买提·艾力", "买买提·艾力"),  # U+00B7 already right
        ("买买提.艾力", "买买提·艾力"),  # a full stop in a CJK name is the separator
        ("买买提 · 艾力", "买买提·艾力"),
        ("  Ayşe   Nur ", "Ayşe Nur"),
        ("Ｊｏｈｎ　Ｓｍｉｔｈ", "John Smith"),  # full-width Latin
        ("O’Brien", "O'Brien"),  # curly apostrophe
        ("Jean‐Pierre", "Jean-Pierre"),  # U+2010 hyphen
        ("\uf9a8", "\uf9a8"),  # a compatibility ideograph is not rewritten (no NFKC on names)
    ],
)
def test_normalise_name(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected
    assert _person(check(raw, ID, MOBILE)).realname == expected


def test_black_circle_is_not_a_middle_dot() -> None:
    result = _invalid(check("买买提●艾力", ID, MOBILE))
    assert result.error_code == INVALID_NAME
    assert result.reason == "姓名格式错误: contains '●' (U+25CF), which is not allowed in names"


# --- ID numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("110101199003078030", "check digit should be X"),
        ("440524198001010010", "check digit should be 3"),
        ("110101199002300004", "birth date 1990-02-30 does not exist"),
        ("110101199013010004", "birth date 1990-13-01 does not exist"),
        ("110101189912310004", "birth date 1899-12-31 is before 1900"),
        ("110101299901010004", "birth date 2999-01-01 is in the future"),
        ("11010119900307803", "must be 18 characters, got 17"),
        ("11010119900307803X1", "must be 18 characters, got 19"),
        ("1101011990030780X3", "must be 17 digits followed by a digit or X"),
        ("11010119900307803Y", "must be 17 digits followed by a digit or X"),
        ("", "empty"),
        ("   ", "empty"),
        ("11010190030780X", "a 15-character (old-style) ID must be all digits"),
        ("110101900230780", "birth date 1990-02-30 does not exist"),
    ],
)
def test_idcard_rejections(raw: str, detail: str) -> None:
    result = _invalid(check(NAME, raw, MOBILE))
    assert result.error_code == INVALID_IDCARD
    assert result.reason == f"身份证号格式错误: {detail}"


def test_feb_29_exists_in_leap_years_only() -> None:
    leap = "32010620000229123"
    assert _person(check(NAME, leap + _check_digit(leap), MOBILE))
    not_leap = "32010619990229123"
    reason = _invalid(check(NAME, not_leap + _check_digit(not_leap), MOBILE)).reason
    assert reason.endswith("birth date 1999-02-29 does not exist")


@pytest.mark.parametrize("cell", [None, True, dt.datetime(2020, 1, 1), dt.date(2020, 1, 1)])
def test_idcard_cells_that_cannot_hold_an_id(cell: object) -> None:
    assert _invalid(check(NAME, cell, MOBILE)).error_code == INVALID_IDCARD


def test_region_codes_are_not_checked() -> None:
    # "999999" is no region in any table; the format and check digit are fine, so it is sent.
    body = "99999919900307803"
    assert _person(check(NAME, body + _check_digit(body), MOBILE))


@pytest.mark.parametrize(
    ("legacy", "upgraded_body"),
    [
        ("110101900307803", "11010119900307803"),
        ("440524800101001", "44052419800101001"),
        ("110105491231002", "11010519491231002"),
    ],
)
def test_legacy_15_digit_ids_are_upgraded(legacy: str, upgraded_body: str) -> None:
    expected = upgraded_body + _check_digit(upgraded_body)
    assert _person(check(NAME, legacy, MOBILE)).idcard == expected
    # A 15-digit number fits in a double: a numeric cell is a genuine legacy ID, not a rounding.
    assert _person(check(NAME, int(legacy), MOBILE)).idcard == expected
    assert _person(check(NAME, float(legacy), MOBILE)).idcard == expected


def test_known_upgrade_values() -> None:
    assert _person(check(NAME, "110101900307803", MOBILE)).idcard == "11010119900307803X"
    assert _person(check(NAME, "440524800101001", MOBILE)).idcard == "440524198001010013"


EXCEL_ROUNDED = (
    "身份证号格式错误: stored as a number by Excel, digits after the 15th are lost; "
    "export the column as text"
)


@pytest.mark.parametrize(
    "cell",
    [
        110101199003078031,  # int with 18 digits, whatever it is, came from a number cell
        110101199003078000,
        1.10101199003078e17,  # float as read from the sheet
        1101011990030780,  # 16 digits
        "1.10101199001011E+17",  # text written in scientific notation
        "1.10101E+17",
        "1.10101199001011e+17",
        "１.１０１０１Ｅ＋１７",
    ],
)
def test_excel_rounded_ids(cell: object) -> None:
    result = _invalid(check(NAME, cell, MOBILE))
    assert result.error_code == INVALID_IDCARD
    assert result.reason == EXCEL_ROUNDED


def test_text_id_ending_000_with_a_bad_check_digit_is_called_rounded() -> None:
    reason = _invalid(check(NAME, "110101199001011000", MOBILE)).reason
    assert reason.startswith("身份证号格式错误: check digit fails and it ends in 000")
    assert "digits after the 15th are lost" in reason


def test_text_id_ending_000_with_a_good_check_digit_is_accepted() -> None:
    assert _check_digit("11010119900110300") == "0"
    assert _person(check(NAME, "110101199001103000", MOBILE)).idcard == "110101199001103000"


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "张三",
        "欧阳娜娜",
        "买买提·艾力",
        "阿卜杜热合曼·买买提·艾力",
        "𠀀𠮷",  # extension B
        "张\U0002a700",  # extension C
        "张\U0002b740",  # extension D
        "张\U0002b820",  # extension E
        "张\U0002ceb0",  # extension F
        "张\U00030000",  # extension G
        "张\U00031350",  # extension H (newer than this Python's Unicode tables)
        "张\uf900",  # compatibility ideograph
        "张\U0002f800",  # compatibility supplement
        "张\ue000",  # private use, BMP
        "张\U000f0000",  # private use, plane 15
        "张\U00100000",  # private use, plane 16
        "李〇",
        "Ayşe Nur",
        "José Müller",
        "Anne-Marie O'Neil",
        "Zoë",
        "J. R. Smith",
        "x" * 50,
    ],
)
def test_names_accepted(name: str) -> None:
    assert _person(check(name, ID, MOBILE)).realname == name


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("", "empty"),
        ("  \u3000 ", "empty"),
        (None, "empty"),
        ("张" * 51, "longer than 50 characters"),
        ("张3", "contains digits"),
        ("张３", "contains digits"),  # full-width digit
        ("张①", "contains digits"),
        (123, "contains digits"),
        (12.5, "contains digits"),
        ("张\x07三", "contains a control character (U+0007)"),
        ("张\u202e三", "contains a control character (U+202E)"),
        ("=HYPERLINK()", "contains '=' (U+003D), which is not allowed in names"),
        ("+张三", "contains '+' (U+002B), which is not allowed in names"),
        ("@张三", "contains '@' (U+0040), which is not allowed in names"),
        ("张<三>", "contains '<' (U+003C), which is not allowed in names"),
        ("张三(先生)", "contains '(' (U+0028), which is not allowed in names"),
        ("张三/李四", "contains '/' (U+002F), which is not allowed in names"),
        ("张三,李四", "contains ',' (U+002C), which is not allowed in names"),
        ("-张三", "contains '-' (U+002D), which is not allowed in names"),  # Latin-only
        ("-Smith", "starts with '-' (U+002D)"),
        ("·艾力", "starts with '·' (U+00B7); a middle dot only goes between two parts of a name"),
        ("·", "contains no letters"),
        (True, "is a TRUE/FALSE cell"),
        (dt.datetime(2020, 1, 1), "is a date/time cell"),
    ],
)
def test_names_rejected(name: object, detail: str) -> None:
    result = _invalid(check(name, ID, MOBILE))
    assert result.error_code == INVALID_NAME
    assert result.reason == f"姓名格式错误: {detail}"


# --- mobiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mobile", [f"1{d}912345678" for d in "3456789"])
def test_mobiles_13_to_19_accepted(mobile: str) -> None:
    assert _person(check(NAME, ID, mobile)).mobile == mobile


def test_unallocated_ranges_are_not_rejected() -> None:
    # 140/141 and 154 are not issued to subscribers today; no range table decides that here.
    for mobile in ("14012345678", "15412345678", "19012345678"):
        assert _person(check(NAME, ID, mobile)).mobile == mobile


@pytest.mark.parametrize(
    ("cell", "expected"),
    [(13812345678, "13812345678"), (13812345678.0, "13812345678"), (8613812345678, MOBILE)],
)
def test_numeric_mobile_cells(cell: object, expected: str) -> None:
    assert _person(check(NAME, ID, cell)).mobile == expected


@pytest.mark.parametrize(
    ("cell", "detail"),
    [
        ("1381234567", "must be 11 digits starting 13-19, got 10 digits"),
        ("138123456789", "must be 11 digits starting 13-19, got 12 digits"),
        ("12812345678", "must be 11 digits starting 13-19, got one starting 12"),
        ("02812345678", "must be 11 digits starting 13-19, got one starting 02"),
        ("1381234567a", "must be 11 digits starting 13-19, got characters other than digits"),
        ("138/13912345678", "must be 11 digits starting 13-19; contains '/' (U+002F)"),
        ("+1 415 555 0100", "must be 11 digits starting 13-19; contains '+' (U+002B)"),
        (
            "1.38123E+10",
            "must be 11 digits starting 13-19; "
            "it is in scientific notation (a number formatted by Excel)",
        ),
        ("", "empty"),
        (None, "empty"),
        (1381234567, "must be 11 digits starting 13-19, got 10 digits"),
        (13812345678.5, "is a number cell that is not a whole number"),
        (float("nan"), "is a number cell that is not a whole number"),
        (False, "is a TRUE/FALSE cell"),
        (dt.time(13, 8), "is a time cell"),
    ],
)
def test_mobile_rejections(cell: object, detail: str) -> None:
    result = _invalid(check(NAME, ID, cell))
    assert result.error_code == INVALID_MOBILE
    assert result.reason == f"手机号格式错误: {detail}"


# --- several problems, privacy, caching ---------------------------------------------------------


def test_id_is_reported_first_then_name_then_mobile() -> None:
    result = _invalid(check("张3", "110101199003078030", "1381234567"))
    assert result.error_code == INVALID_IDCARD
    assert result.reason == (
        "身份证号格式错误: check digit should be X | 姓名格式错误: contains digits"
        " | 手机号格式错误: must be 11 digits starting 13-19, got 10 digits"
    )
    name_and_mobile = _invalid(check("张3", ID, "1381234567"))
    assert name_and_mobile.error_code == INVALID_NAME
    assert name_and_mobile.reason.startswith("姓名格式错误: contains digits | 手机号格式错误")


@pytest.mark.parametrize(
    ("name", "idcard", "mobile"),
    [
        ("王小明3", "110101199003078030", "1391234567"),
        ("王小明", "110101199002300004", "13912345678"),
        ("王小明", "1.10101199003078E+17", "139123456789"),
        ("王小明", "11010119900307803", "12912345678"),
    ],
)
def test_reasons_never_hold_the_values(name: str, idcard: str, mobile: str) -> None:
    reason = _invalid(check(name, idcard, mobile)).reason
    for value in (name, idcard, mobile, idcard[:15], mobile[3:]):
        assert value not in reason


def test_numeric_and_text_cells_are_cached_apart() -> None:
    # Same digits, different cell types, different verdicts: the memo must not mix them up.
    assert isinstance(check(NAME, "110101199003078031", MOBILE), Invalid)
    assert check(NAME, 110101199003078031, MOBILE) == Invalid(INVALID_IDCARD, EXCEL_ROUNDED)
    assert isinstance(check(NAME, 110101900307803, MOBILE), Person)
    assert isinstance(check(NAME, 110101900307803.0, MOBILE), Person)
    assert isinstance(check(NAME, ID, True), Invalid)
    assert isinstance(check(NAME, ID, 13812345678), Person)


def test_repeated_rows_are_answered_from_the_memo() -> None:
    from batch_enricher import validate

    validate.check.cache_clear()
    for _ in range(1000):
        check(NAME, ID, MOBILE)
    info = validate.check.cache_info()
    assert (info.misses, info.hits) == (1, 999)


def test_a_mobile_exported_as_float_text_is_read_as_its_digits() -> None:
    # pandas writes a float column as "13812345678.0"; the ".0" is formatting, not a digit.
    person = check("张三", "11010119900307803X", "13812345678.0")
    assert isinstance(person, Person) and person.mobile == "13812345678"
    assert isinstance(check("张三", "11010119900307803X", "13812345678.5"), Invalid)
    assert isinstance(check("张三", "11010119900307803X", "1381234567.0"), Invalid)
