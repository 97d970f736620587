"""Local validation: edge cases that were once wrong (see each test's docstring)."""

from __future__ import annotations

import datetime as dt
import os
import time
import unicodedata
from collections.abc import Iterator

import pytest

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
