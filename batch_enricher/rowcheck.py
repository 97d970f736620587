"""A row's verdict: blank, or invalid (and why), or a person to ask about (and their journal key).

One `RowCheck` per input file, shared by planning, the write pass and `validate`, so the three
always agree on what a row is:

- **blank**: every cell empty or whitespace. It stays at its place in the output with empty
  result cells; it is not a person, not invalid, and not counted as a row of people.
- **invalid**: a damaged cell (bytes that did not decode: `Source.damage_reason`), a name that
  cannot be a real one in this file (`plausible.implausible`: mojibake of a wrong code page), or
  a field that fails the local checks (`validate.check`). Never sent.
- **a person**: the normalised `Person`, and its journal key when a key function is given.

Cells past the header's last column are the user's (an unlabelled notes column): they do not
make a row invalid. A row shorter than the header counts its missing fields as empty.

Verdicts are memoised on the three raw cells (big files repeat few people), except where they
depend on more than those cells: a damaged file's rows, and rows whose three cells are empty
(which may be blank rows).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Final

from batch_enricher.codes import INVALID_NAME, reason_of
from batch_enricher.columns import ColumnMap
from batch_enricher.models import Invalid, Person
from batch_enricher.plausible import NameProfile, implausible, profile
from batch_enricher.reader import Cell, Source
from batch_enricher.validate import check

__all__ = ["MEMO_SIZE", "RowCheck", "Verdict", "is_blank"]

#: Rows' verdicts kept in memory at most (emptied when full).
MEMO_SIZE: Final = 1 << 14

#: None for a blank row, else the row's `Invalid` or `Person`, and the person's journal key.
Verdict = tuple[Person | Invalid | None, bytes | None]


def is_blank(row: Sequence[Cell]) -> bool:
    """Whether every cell is empty or whitespace.

    >>> is_blank(["", "  ", None]), is_blank(["", "备注"])
    (True, False)
    """
    return all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in row)


class RowCheck:
    """Verdicts for the rows of one input; `check(number, row)` or the `memo` fast path.

    The hot loops read `memo` directly with the three raw cells when `len(row) > top` (never,
    in a damaged file); anything else goes through the call.
    """

    def __init__(
        self,
        source: Source,
        columns: ColumnMap,
        names: NameProfile | None,
        key: Callable[[Person], bytes] | None = None,
    ) -> None:
        self._source = source
        self._fields = (columns.realname, columns.idcard, columns.mobile)
        self._names = names
        self._key = key
        self.damaged = source.damaged
        #: the memo fast path applies to rows longer than this: rows holding all three cells,
        #: and none at all in a damaged file (whose rows are judged by all their cells)
        self.top = max(self._fields) if not source.damaged else sys.maxsize
        #: raw (name, ID, mobile) cells → verdict; read directly by the hot loops
        self.memo: dict[tuple[Cell, Cell, Cell], Verdict] = {}

    def __call__(self, number: int, row: Sequence[Cell]) -> Verdict:
        """The verdict of sheet or file row `number` (1-based), whose cells are `row`."""
        if self.damaged:
            why = self._source.damage_reason(number, row)
            if why is not None:
                return Invalid(None, why), None
        n, (a, b, c) = len(row), self._fields
        raw = (row[a] if a < n else None, row[b] if b < n else None, row[c] if c < n else None)
        hit = self.memo.get(raw)
        if hit is not None:
            return hit
        verdict: Person | Invalid = check(*raw)
        if isinstance(verdict, Invalid):
            if is_blank(row):
                return None, None
        elif self._names is not None:
            why = implausible(verdict.realname, self._names)
            if why is not None:
                verdict = Invalid(INVALID_NAME, f"{reason_of(INVALID_NAME)}: {why}")
        entry: Verdict = (
            verdict,
            self._key(verdict) if self._key is not None and isinstance(verdict, Person) else None,
        )
        # Only all-text triples: `check` tells an int from an equal float, a dict would not.
        # And not an empty triple: whether its row is blank depends on the other cells.
        if all(type(cell) is str for cell in raw) and not is_blank(raw):
            if len(self.memo) >= MEMO_SIZE:
                self.memo.clear()
            self.memo[raw] = entry
        return entry


def name_profile(source: Source, columns: ColumnMap, sample: int = 1000) -> NameProfile:
    """What the names of a file are written in, from its first `sample` rows."""
    at = columns.realname
    return profile(row[at] for row in source.head(sample) if len(row) > at)
