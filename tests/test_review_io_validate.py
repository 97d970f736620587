"""Review of local validation: edge cases a reviewer found wrong (see each test's docstring)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import pytest

from batch_enricher.models import Invalid, Person
from batch_enricher.validate import check

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
