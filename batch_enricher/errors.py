"""Every exception batch-enricher raises on purpose, in one tree.

    EnricherError                    anything the CLI turns into a message and an exit code
    ├── InputError                   exit 1: the input cannot be read as a table
    │   ├── ColumnError              a needed column is missing or ambiguous
    │   └── UnsupportedFileError     an extension or format we do not read
    ├── OutputError                  exit 1: the output cannot be written
    ├── ConfigError                  exit 1: bad settings, no key
    ├── JournalError                 exit 1: the journal cannot be opened
    │   ├── JournalLockedError       another run holds the journal
    │   ├── JournalMismatchError     journal and secret do not belong together (missing,
    │   │                            emptied or swapped): put it back or --new-journal
    │   └── JournalDamagedError      fails its integrity check: `journal recover`
    ├── ScratchError                 exit 1: the run's scratch store (spill.py) failed
    └── ApiError                     one reply that is not a plain answer
        ├── TransientApiError        worth retrying: 10011, 10012, 10014, 281504, 429/5xx,
        │   │                        timeouts, connection errors, undecodable replies
        │   ├── RateLimitedError     10011 (also slows the shared rate)
        │   ├── QuotaExceededError   10012 (opens the quota breaker when it persists)
        │   ├── ConnectFailedError   no connection (refused, DNS, TLS, connect timeout):
        │   │                        the request was certainly not sent, nothing billed
        │   └── UncertainReplyError  the request was sent, then no usable reply (timeout,
        │                            dropped connection, unreadable 200, 504): possibly billed
        └── AccountError             10001-10005, 10007-10009, 10013, 10020, 10021: abort the run

Messages never carry personal data or the API key: callers mask before raising.
"""

from __future__ import annotations


class EnricherError(Exception):
    """Base class: a problem the user can act on, with a message fit to show them."""

    exit_code = 1


class InputError(EnricherError):
    """The input file is missing, empty, corrupt or not a table we can read."""


class ColumnError(InputError):
    """A needed column is missing or two columns claim the same field."""


class UnsupportedFileError(InputError):
    """A file extension or format that batch-enricher does not read or write."""


class OutputError(EnricherError):
    """The output cannot be written (permissions, same path as the input, ...)."""


class ConfigError(EnricherError):
    """Settings are inconsistent or incomplete (no key, unreadable config file, ...)."""


class JournalError(EnricherError):
    """The journal database cannot be opened or written."""


class JournalLockedError(JournalError):
    """Another run is using the same journal."""


class JournalMismatchError(JournalError):
    """The journal and its secret do not belong together: using them would pay everyone again."""


class JournalDamagedError(JournalError):
    """The journal fails its integrity check; `batch-enricher journal recover` saves what it can."""


class ScratchError(EnricherError):
    """The run's private scratch database (its people, off the heap) cannot be used."""


class ApiError(EnricherError):
    """A reply (or lack of one) that is not a final answer about a person."""

    def __init__(self, message: str, *, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class TransientApiError(ApiError):
    """Worth retrying after a pause."""


class RateLimitedError(TransientApiError):
    """10011: the server says we are sending too fast."""


class QuotaExceededError(TransientApiError):
    """10012: the account's request quota is spent (for now)."""


class ConnectFailedError(TransientApiError):
    """No connection could be made, so the request never left: certainly not billed."""


class UncertainReplyError(TransientApiError):
    """The request left, then its reply was lost: the server may have billed it.

    Counted as possibly billed, held against --max-billed, and retried only within its own
    small allowance (see `client.RetryPolicy.uncertain_retries`).
    """


class AccountError(ApiError):
    """An account-level code: no further request can succeed, so the run aborts."""

    exit_code = 4
