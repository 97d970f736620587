"""The run summary: counts per file and for the whole run, as the JSON keys DESIGN.md lists."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_enricher.autorate import RateFound
from batch_enricher.models import Status


@dataclass
class FileSummary:
    """What happened to one input file's rows."""

    input: Path
    output: Path | None
    rows: int = 0  # rows of people (blank rows not included)
    statuses: Counter[Status] = field(default_factory=Counter)
    blank: int = 0  # blank rows, kept in place with empty result cells
    #: per model, rows per band (ok rows only), for the XLSX summary charts
    bands: dict[str, Counter[str]] = field(default_factory=dict)


@dataclass
class RunSummary:
    """The whole run's counts; `to_json()` gives the `--summary-json` document."""

    files: list[FileSummary] = field(default_factory=list)
    identities: int = 0  # distinct valid people
    duplicates: int = 0  # rows answered by an earlier row of the run
    reused: int = 0  # identities answered from the journal
    to_call: int = 0  # identities that needed a call (dry run: calls that would be made)
    api_calls: int = 0
    billed: int = 0
    retries: int = 0
    #: attempts whose reply was lost after the request was sent: each may have been billed
    possibly_billed: int = 0
    rate_limited: int = 0  # 10011 replies received
    rate_found: RateFound | None = None  # what --qps auto learned (None: not asked)
    elapsed_s: float = 0.0
    exit_code: int = 0
    dry_run: bool = False
    max_billable: int = 0  # dry run: the most that could be billed
    stop_reason: str | None = None
    abort_code: int | None = None
    #: monotonic clock at creation, so a report made mid-run can say how long the run has taken
    started: float = field(default_factory=time.monotonic, repr=False, compare=False)

    @property
    def rows(self) -> int:
        """Rows over all input files."""
        return sum(f.rows for f in self.files)

    def elapsed_now(self) -> float:
        """Seconds the run took: `elapsed_s` once it is over, the time so far before that."""
        return self.elapsed_s or time.monotonic() - self.started

    def count(self, status: Status) -> int:
        """Rows with `status` over all input files."""
        return sum(f.statuses[status] for f in self.files)

    def to_json(self) -> dict[str, Any]:
        """The summary as DESIGN.md's keys, plus per-file detail."""
        doc: dict[str, Any] = {
            "rows": self.rows,
            "identities": self.identities,
            **{status.value: self.count(status) for status in Status},
            "duplicates": self.duplicates,
            "reused": self.reused,
            "api_calls": self.api_calls,
            "billed": self.billed,
            "possibly_billed": self.possibly_billed,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            # --qps auto: the rate to give --qps next time; null when not asked or not learned
            "rate_found": self.rate_found.rate if self.rate_found else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "exit_code": self.exit_code,
        }
        if self.dry_run:
            doc["dry_run"] = True
            doc["would_call"] = self.to_call
            doc["max_billable"] = self.max_billable
        if self.stop_reason:
            doc["stop_reason"] = self.stop_reason
        doc["files"] = [
            {
                "input": str(f.input),
                "output": str(f.output) if f.output else None,
                "rows": f.rows,
                **{status.value: f.statuses[status] for status in Status},
                **({"blank": f.blank} if f.blank else {}),
            }
            for f in self.files
        ]
        return doc
