"""The local journal, kept under its old name: it now lives in `store/sqlite.py`.

Existing imports (`from batch_enricher.journal import Journal`) keep working; new code that
does not care which store it has uses the interfaces in `store/base.py`.
"""

from __future__ import annotations

from batch_enricher.store.sqlite import (
    COPY_SQL,
    SCHEMA_VERSION,
    Journal,
    create_schema,
    damaged_message,
    default_state_path,
    inspect_db,
    integrity_problem,
    resolve_path,
    run_lock,
    select_range_sql,
    storable_row,
)

__all__ = [
    "COPY_SQL",
    "SCHEMA_VERSION",
    "Journal",
    "create_schema",
    "damaged_message",
    "default_state_path",
    "inspect_db",
    "integrity_problem",
    "resolve_path",
    "run_lock",
    "select_range_sql",
    "storable_row",
]
