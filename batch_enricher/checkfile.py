"""`validate`: local checks of one input file, with counts by problem and an optional report.

Nothing here touches the network or the journal: it answers "what would be sent, and what is
wrong with the rest" before anyone pays for anything.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from batch_enricher.columns import existing_result_columns, find_columns
from batch_enricher.errors import OutputError
from batch_enricher.models import Invalid, Person
from batch_enricher.reader import open_source
from batch_enricher.validate import check_row
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
) -> ValidationResult:
    """Check every row of `path` locally; write `report` (your rows + status and reason)."""
    if report is not None and Path(report).resolve() == Path(path).resolve():
        # The report is written beside and renamed over its target: that would be the input.
        raise OutputError(f"the report {report} is the input file; choose another -o")
    source = open_source(path, sheet=sheet, encoding=encoding)
    columns = find_columns(source.headers, realname=name_col, idcard=idcard_col, mobile=mobile_col)
    old = set(existing_result_columns(source.headers))
    keep = [i for i in range(len(source.headers)) if i not in old]
    result = ValidationResult(path, report)
    people: set[Person] = set()
    width = len(source.headers)

    def rows() -> Any:
        for row in source.rows():
            cells = [row[i] if i < len(row) else None for i in keep]
            outcome = check_row(row, columns, width)
            result.rows += 1
            if isinstance(outcome, Invalid):
                result.invalid += 1
                result.problems[problem_kind(outcome.reason)] += 1
                yield [*cells, "invalid", outcome.error_code, outcome.reason]
            else:
                result.valid += 1
                people.add(outcome)
                yield [*cells, "valid", None, None]

    if report is None:
        for _ in rows():
            pass
    else:
        out_index = {orig: pos for pos, orig in enumerate(keep)}
        text = {out_index[i] for i in (columns.idcard, columns.mobile) if i in out_index}
        headers = [source.headers[i] for i in keep] + list(REPORT_COLUMNS)
        with open_writer(report, headers, text_columns=text, status_column=len(keep)) as writer:
            for cells in rows():
                writer.write_row(cells)
            writer.commit()
    result.distinct = len(people)
    return result


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
