"""Score → band tables, from the reference's three score tables, kept as data.

Each table is a list of `(low, high, band)` rows: a score `s` with `low <= s <= high` gets `band`.
Scores outside every row (stability 1-19, anything above 100, empty, non-numeric) are
`UNMAPPED`: we never guess a band the reference does not give.

The reference's oddities, kept as published rather than silently "fixed" (a config file can
override any table, see `load_tables`):
- range 20-29 repeats `(0,1500]`, and no row gives `(1500,4500]`;
- history 90-99 is printed `120，180]` (missing parenthesis); we write `(120,180]`;
- history 100 is labelled 预测金融能力 (copied from range) but its band `180+` is history's;
- stability has no row for 1-19.
Bands use ASCII commas, as DESIGN.md writes them. Score 0 is the reference's 无法预测.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

UNPREDICTABLE: Final = "无法预测"
UNMAPPED: Final = "unmapped"

Table = Sequence[tuple[int, int, str]]

#: The three models, in the order their columns are written.
MODELS: Final = ("range", "history", "stability")

DEFAULT_TABLES: Final[dict[str, Table]] = {
    "range": (
        (0, 0, UNPREDICTABLE),
        (10, 19, "(0,1500]"),
        (20, 29, "(0,1500]"),  # sic: the reference repeats 10-19's band here
        (30, 39, "(4500,6000]"),
        (40, 49, "(4500,6000]"),
        (50, 59, "(6000,8000]"),
        (60, 69, "(8000,10000]"),
        (70, 79, "(10000,13000]"),
        (80, 89, "(13000,16000]"),
        (90, 99, "(16000,20000]"),
        (100, 100, "20000+"),
    ),
    "history": (
        (0, 0, UNPREDICTABLE),
        (10, 19, "(0,6]"),
        (20, 29, "(6,12]"),
        (30, 39, "(12,24]"),
        (40, 49, "(24,36]"),
        (50, 59, "(36,48]"),
        (60, 69, "(48,60]"),
        (70, 79, "(60,84]"),
        (80, 89, "(84,120]"),
        (90, 99, "(120,180]"),  # the reference prints "120，180]"
        (100, 100, "180+"),
    ),
    "stability": (
        (0, 0, UNPREDICTABLE),
        (20, 39, "(0,6]"),
        (40, 59, "(6,12]"),
        (60, 79, "(12,18]"),
        (80, 99, "(18,24)"),
        (100, 100, "24"),
    ),
}


def band(model: str, score: str, tables: Mapping[str, Table] = DEFAULT_TABLES) -> str:
    """The band for a raw score string of one model, or `UNMAPPED`.

    >>> band("range", "16")
    '(0,1500]'
    >>> band("stability", "15")
    'unmapped'
    """
    text = score.strip()
    if not text.isdecimal() or not text.isascii():
        return UNMAPPED
    value = int(text)
    for low, high, label in tables[model]:
        if low <= value <= high:
            return label
    return UNMAPPED


def load_tables(overrides: Mapping[str, object] | None) -> dict[str, Table]:
    """Merge `[bands.<model>]` tables from a config file over the defaults.

    Each override is a list of `[low, high, "band"]` triples and replaces that model's table.

    >>> load_tables({"stability": [[0, 100, "any"]]})["stability"]
    ((0, 100, 'any'),)
    """
    tables: dict[str, Table] = dict(DEFAULT_TABLES)
    for model, rows in (overrides or {}).items():
        if model not in MODELS:
            raise ValueError(f"unknown score model {model!r}; expected one of {', '.join(MODELS)}")
        if not isinstance(rows, list):
            raise ValueError(f"bands.{model} must be a list of [low, high, band] rows")
        parsed: list[tuple[int, int, str]] = []
        for row in rows:
            if (
                not isinstance(row, list)
                or len(row) != 3
                or not isinstance(row[0], int)
                or not isinstance(row[1], int)
                or not isinstance(row[2], str)
                or row[0] > row[1]
            ):
                raise ValueError(f"bands.{model}: bad row {row!r}; expected [low, high, band]")
            parsed.append((row[0], row[1], row[2]))
        tables[model] = tuple(parsed)
    return tables
