"""`validate`: local checks of one input file, with counts by problem and an optional report.

Nothing here touches the network or the journal: it answers "what would be sent, and what is
wrong with the rest" before anyone pays for anything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from batch_enricher.columns import ColumnMap, ColumnNames, existing_result_columns
from batch_enricher.errors import OutputError
from batch_enricher.models import Invalid, Person
from batch_enricher.reader import Cell, Source, open_source
from batch_enricher.rowcheck import RowCheck, name_profile
from batch_enricher.writer import open_writer

REPORT_COLUMNS: Final = ("status", "error_code", "error_reason")

# Problems are counted by kind: a reason's row-specific details (a birth date, the expected
# check digit, a quoted character, a length) are folded so rows with the same problem count
# together and no personal detail reaches the terminal. The rules' own numbers stay.
_FOLDS: Final = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "YYYY-MM-DD"),
    (re.compile(r"should be [0-9X]\b"), "should be ?"),
    (re.compile(r"got \d+"), "got N"),
    # A quoted character with its code point ("'/' (U+002F)"), first: the character may be "'".
    (re.compile(r"'.' \(U\+[0-9A-F]{4,6}\)", re.DOTALL), "…"),
    (re.compile(r"'[^']*'|U\+[0-9A-F]{4,6}"), "…"),
)


@dataclass
class ValidationResult:
    """Counts of one `validate` run."""

    input: Path
    report: Path | None = None
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    distinct: int = 0  # distinct valid people: the calls an enrich run would make at most
    problems: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {
            "input": str(self.input),
            "report": str(self.report) if self.report else None,
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "identities": self.distinct,
            "problems": dict(self.problems.most_common()),
        }


def problem_kind(reason: str) -> str:
    """A reason with its row-specific details folded, for counting.

    >>> problem_kind("身份证号格式错误: birth date 1990-02-30 does not exist")
    '身份证号格式错误: birth date YYYY-MM-DD does not exist'
    """
    for pattern, replacement in _FOLDS:
        reason = pattern.sub(replacement, reason)
    return reason


def validate_file(
    path: Path,
    *,
    report: Path | None = None,
    name_col: str | None = None,
    idcard_col: str | None = None,
    mobile_col: str | None = None,
    sheet: str | int | None = None,
    encoding: str | None = None,
    header_row: int | None = None,
) -> ValidationResult:
    """Check every row of `path` locally; write `report` (your rows + status and reason).

    Rows are judged exactly as `enrich` judges them (`rowcheck.RowCheck`); blank rows and the
    rows above the header stay in the report at their place, with an empty status.
    """
    if report is not None and Path(report).resolve() == Path(path).resolve():
        # The report is written beside and renamed over its target: that would be the input.
        raise OutputError(f"the report {report} is the input file; choose another -o")
    source = open_source(
        path,
        sheet=sheet,
        encoding=encoding,
        header_row=header_row,
        names=ColumnNames(name_col, idcard_col, mobile_col),
    )
    columns = source.columns
    assert columns is not None  # with `names`, a missing header is an InputError
    verdict_of = RowCheck(source, columns, name_profile(source, columns))
    result = ValidationResult(path, report)
    people: set[Person] = set()

    def rows() -> Iterator[tuple[list[Cell], list[Cell]]]:
        for number, row in source.numbered_rows():
            verdict, _ = verdict_of(number, row)
            if verdict is None:
                yield row, [None, None, None]
                continue
            result.rows += 1
            if isinstance(verdict, Invalid):
                result.invalid += 1
                result.problems[problem_kind(verdict.reason)] += 1
                yield row, ["invalid", verdict.error_code, verdict.reason]
            else:
                result.valid += 1
                people.add(verdict)
                yield row, ["valid", None, None]

    if report is None:
        for _ in rows():
            pass
    else:
        _write_report(report, source, columns, rows())
    result.distinct = len(people)
    return result


def _write_report(
    report: Path,
    source: Source,
    columns: ColumnMap,
    rows: Iterator[tuple[list[Cell], list[Cell]]],
) -> None:
    """Your rows, each padded to the widest row, then status, code and reason."""
    old = set(existing_result_columns(source.headers))
    keep = [i for i in range(source.width) if i not in old]
    out_index = {orig: pos for pos, orig in enumerate(keep)}
    text = {out_index[i] for i in (columns.idcard, columns.mobile) if i in out_index}
    headers = [source.headers[i] if i < len(source.headers) else "" for i in keep]
    with open_writer(
        report,
        [*headers, *REPORT_COLUMNS],
        text_columns=text,
        status_column=len(keep),
        preamble=source.preamble(),
    ) as writer:
        for row, tail in rows:
            writer.write_row([*(row[i] if i < len(row) else None for i in keep), *tail])
        writer.commit()


def format_validation(result: ValidationResult) -> str:
    """The terminal text of a `validate` run."""
    lines = [
        f"{result.input}: {result.rows} row(s): {result.valid} valid, {result.invalid} invalid; "
        f"{result.distinct} distinct valid people (calls an enrich run would make at most)"
    ]
    for kind, count in result.problems.most_common():
        lines.append(f"  {count:>6}  {kind}")
    if result.report is not None:
        lines.append(f"report: {result.report}")
    lines.append("nothing was sent" + ("" if result.invalid else "; every row is valid"))
    return "\n".join(lines)
