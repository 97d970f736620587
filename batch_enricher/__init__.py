"""batch-enricher: enrich spreadsheets with Juhe's 经济能力评级（社保）查询 API.

The public Python API (everything else is private):

- `enrich_frame(df, ...)` / `enrich_frame_async(df, ...)`: a pandas DataFrame with the 11
  result columns appended; `validate_frame(df)`: the local checks only (needs the `pandas`
  extra: `pip install 'batch-enricher[pandas]'`).
- `enrich_files(paths, ...)`: the CLI's file job, returning its `RunSummary`.
- `run_sandbox(...)`: the API emulator on loopback for tests (a context manager).
- The exceptions a caller may catch: `EnricherError` and its subclasses (`errors.py`).

Exports are loaded on first use, so `import batch_enricher` (and the CLI) stays free of pandas
and aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "enrich_frame": "batch_enricher.frame",
    "enrich_frame_async": "batch_enricher.frame",
    "validate_frame": "batch_enricher.frame",
    "enrich_files": "batch_enricher.api",
    "run_sandbox": "batch_enricher.api",
    "RunSummary": "batch_enricher.summary",
    "FileSummary": "batch_enricher.summary",
    "Status": "batch_enricher.models",
    "RetryPolicy": "batch_enricher.client",
    "SandboxConfig": "batch_enricher.sandbox",
    "EnricherError": "batch_enricher.errors",
    "InputError": "batch_enricher.errors",
    "ColumnError": "batch_enricher.errors",
    "OutputError": "batch_enricher.errors",
    "ConfigError": "batch_enricher.errors",
    "JournalError": "batch_enricher.errors",
    "JournalLockedError": "batch_enricher.errors",
    "ApiError": "batch_enricher.errors",
    "TransientApiError": "batch_enricher.errors",
    "QuotaExceededError": "batch_enricher.errors",
    "AccountError": "batch_enricher.errors",
}

__all__ = [
    "AccountError",
    "ApiError",
    "ColumnError",
    "ConfigError",
    "EnricherError",
    "FileSummary",
    "InputError",
    "JournalError",
    "JournalLockedError",
    "OutputError",
    "QuotaExceededError",
    "RetryPolicy",
    "RunSummary",
    "SandboxConfig",
    "Status",
    "TransientApiError",
    "__version__",
    "enrich_files",
    "enrich_frame",
    "enrich_frame_async",
    "run_sandbox",
    "validate_frame",
]

if TYPE_CHECKING:
    from batch_enricher.api import enrich_files, run_sandbox
    from batch_enricher.client import RetryPolicy
    from batch_enricher.errors import (
        AccountError,
        ApiError,
        ColumnError,
        ConfigError,
        EnricherError,
        InputError,
        JournalError,
        JournalLockedError,
        OutputError,
        QuotaExceededError,
        TransientApiError,
    )
    from batch_enricher.frame import enrich_frame, enrich_frame_async, validate_frame
    from batch_enricher.models import Status
    from batch_enricher.sandbox import SandboxConfig
    from batch_enricher.summary import FileSummary, RunSummary


def __getattr__(name: str) -> Any:
    """Load an export from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batch_enricher' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
