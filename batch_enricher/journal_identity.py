"""Which secret belongs to which journal, and how to start over without throwing anything away.

A journal's keys are HMACs under its secret, so a journal read with another secret (or a
secret whose journal was emptied, deleted or swapped) silently matches nobody, and every
person would be paid for again. To catch that before anything is sent, the two are bound:

- the database stores a *fingerprint* of the secret, HMAC-SHA256(secret, a fixed label) (it
  reveals nothing about the secret and cannot be used to compute keys), and a random
  *journal id*;
- the secret file holds the secret followed by that journal id (`<journal>.secret`, mode 0600;
  a 32-byte file from before the binding holds the secret alone).

`binding_problem` compares what was found on disk and says, in one line, what is wrong;
`set_aside` renames a journal and its secret out of the way (never deleting them) so a new
pair can be created deliberately.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Final

from .errors import JournalError

__all__ = [
    "JOURNAL_ID_BYTES",
    "SECRET_BYTES",
    "DbFacts",
    "DbKind",
    "Problem",
    "SecretFile",
    "binding_problem",
    "fingerprint",
    "new_secret",
    "read_secret",
    "set_aside",
    "sibling",
    "write_secret",
]

SECRET_BYTES: Final = 32
JOURNAL_ID_BYTES: Final = 16
_FINGERPRINT_LABEL: Final = b"batch-enricher journal fingerprint"
_FILE_MODE: Final = 0o600
#: Everything that makes up one journal on disk, beside the database file itself. The WAL
#: files travel with it: committed answers may still live only in `-wal`.
_DB_SIDECARS: Final = ("-wal", "-shm", "-journal")


class DbKind(Enum):
    """What the database file at a journal's path turned out to be."""

    MISSING = "missing"  # no file at all
    EMPTY = "empty"  # 0 bytes, or an SQLite file with no schema
    V1 = "version 1"  # answers only: made before journals knew their secret
    V2 = "version 2"  # answers plus the fingerprint and journal id


@dataclass(frozen=True)
class DbFacts:
    """What the database records about itself (fingerprint and id only for `DbKind.V2`)."""

    kind: DbKind
    fingerprint: bytes | None = None
    journal_id: bytes | None = None
    answers: int | None = None  # counted only where it decides something


@dataclass(frozen=True)
class SecretFile:
    """The contents of `<journal>.secret`."""

    secret: bytes
    journal_id: bytes | None  # None: a file written before journals had an id

    def to_bytes(self) -> bytes:
        """The file's bytes: the secret, then the journal id."""
        return self.secret + (self.journal_id or b"")


def sibling(path: Path, suffix: str) -> Path:
    """`path` with `suffix` appended to its name: `journal.sqlite3` → `journal.sqlite3.secret`."""
    return path.with_name(path.name + suffix)


def fingerprint(secret: bytes) -> bytes:
    """What the database stores to recognise its secret: HMAC(secret, a fixed label)."""
    return hmac.new(secret, _FINGERPRINT_LABEL, hashlib.sha256).digest()


def new_secret() -> SecretFile:
    """A fresh random secret with a fresh random journal id."""
    return SecretFile(secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(JOURNAL_ID_BYTES))


def read_secret(path: Path) -> SecretFile | None:
    """The secret file at `path`, or None if there is none; a damaged one is a JournalError."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(SECRET_BYTES + JOURNAL_ID_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot read the journal secret {path}: {exc.strerror}") from None
    if len(raw) == SECRET_BYTES:
        return SecretFile(raw, None)
    if len(raw) == SECRET_BYTES + JOURNAL_ID_BYTES:
        return SecretFile(raw[:SECRET_BYTES], raw[SECRET_BYTES:])
    raise JournalError(
        f"the journal secret {path} is damaged ({len(raw)} bytes, expected {SECRET_BYTES} or "
        f"{SECRET_BYTES + JOURNAL_ID_BYTES}); restore it from a backup, or run with "
        "--new-journal to set the journal and its secret aside and start a new one"
    )


def write_secret(path: Path, secret: SecretFile) -> None:
    """Write the secret file atomically (temporary file, fsync, rename), mode 0600."""
    temp = sibling(path, f".tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
        _sync_folder(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise JournalError(
            f"cannot write the journal secret {path}: {exc.strerror}; nothing was sent"
        ) from None


@dataclass(frozen=True)
class Problem:
    """Why a journal and its secret cannot be used together: what is wrong, and the fix."""

    what: str
    fix: str

    def message(self) -> str:
        """One line for a refused run: what is wrong, that nothing was sent, how to go on."""
        return (
            f"{self.what}; nothing was sent. {self.fix}, or run with --new-journal to set the "
            "journal and its secret aside (renamed, not deleted) and start an empty journal "
            "(everyone is then paid for again)"
        )


def binding_problem(path: Path, secret: SecretFile | None, db: DbFacts) -> Problem | None:
    """Why the journal at `path` and its secret cannot be used together, or None if they can.

    A missing secret is a problem only when answers would be orphaned; a journal with no
    answers simply gets a new secret.
    """
    secret_path = sibling(path, ".secret")
    if secret is None:
        if db.kind in (DbKind.V1, DbKind.V2) and db.answers:
            return Problem(
                f"the journal {path} holds {db.answers} answer(s) but its secret {secret_path} "
                "is missing: without it they can never be matched again and everyone would be "
                "paid for twice",
                f"Restore {secret_path} from a backup",
            )
        return None
    lost = {DbKind.MISSING: "is missing", DbKind.EMPTY: "is empty"}.get(db.kind)
    if lost is not None:
        return Problem(
            f"the journal {path} {lost} but its secret {secret_path} is there: the answers it "
            "held are gone, so everyone would be paid for again",
            f"Put {path} back from a backup",
        )
    if db.kind is DbKind.V1:
        if secret.journal_id is None:
            return None  # a journal from before the binding: bound to this secret on open
        return Problem(
            f"the journal {path} is an old (version 1) journal but its secret {secret_path} "
            "was made for a newer one: the journal was replaced",
            "Put the right journal back",
        )
    if db.fingerprint is None or not hmac.compare_digest(
        db.fingerprint, fingerprint(secret.secret)
    ):
        return Problem(
            f"the journal {path} and its secret {secret_path} do not belong together (one of "
            "them was replaced): its answers would match nobody and everyone would be paid for "
            "again",
            "Put back the matching journal or secret",
        )
    if secret.journal_id is not None and secret.journal_id != db.journal_id:
        return Problem(
            f"the journal {path} is not the one its secret {secret_path} was made with: it was "
            "replaced by another journal",
            "Put the right journal back",
        )
    return None


def set_aside(path: Path, label: str, *, keep_secret: bool = False) -> Path | None:
    """Rename the journal at `path`, its WAL files and its secret to `<name>.<label>-<time>…`.

    The renamed files still form a usable journal (`--state` the returned path). With
    `keep_secret`, the secret is copied instead of moved (the journal that takes this one's
    place uses it). Returns the new database path, or None if there was nothing to move.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = sibling(path, f".{label}-{stamp}")
    n = 1
    while any(sibling(target, s).exists() for s in ("", *_DB_SIDECARS, ".secret")):
        n += 1
        target = sibling(path, f".{label}-{stamp}-{n}")
    secret_path = sibling(path, ".secret")
    moves = [(sibling(path, s), sibling(target, s)) for s in ("", *_DB_SIDECARS)]
    if not keep_secret:
        moves.append((secret_path, sibling(target, ".secret")))
    moved = False
    try:
        for old, new in moves:
            if old.exists():
                os.rename(old, new)
                moved = True
        if keep_secret and secret_path.exists():
            _copy_private(secret_path, sibling(target, ".secret"))
        _sync_folder(path.parent)
    except OSError as exc:
        raise JournalError(
            f"cannot move the journal {path} aside: {exc.strerror}; nothing was sent"
        ) from None
    return target if moved else None


def _copy_private(source: Path, dest: Path) -> None:
    data = source.read_bytes()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
