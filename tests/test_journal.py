"""The journal keeps every paid answer, across runs and crashes, without plaintext identities."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batch_enricher.errors import (
    JournalDamagedError,
    JournalError,
    JournalLockedError,
    JournalMismatchError,
)
from batch_enricher.journal import Journal, default_state_path
from batch_enricher.models import Answer, Person, Status

ZHANG = Person(realname="张三丰", idcard="11010119900307803X", mobile="13812345678")
LI = Person(realname="李四", idcard="110101199003071234", mobile="13987654321")

OK = Answer(
    status=Status.OK,
    error_code=0,
    reason="成功",
    orderid="JH2024050110000001",
    range="16",
    history="25",
    stability="60",
    queried_at="2024-05-01T10:00:00+08:00",
)
REJECTED = Answer(
    status=Status.REJECTED,
    error_code=281505,
    reason="查询失败",
    orderid="",
    range="",
    history="",
    stability="",
    queried_at="2024-05-02T02:00:00+00:00",
)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _answer_at(iso: str, orderid: str = "X1") -> Answer:
    return Answer(Status.OK, 0, "成功", orderid, "1", "2", "30", iso)


# Subprocesses import the package from this checkout, wherever pytest was started.
_REPO = str(Path(__file__).resolve().parents[1])
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")])),
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(db: Path) -> Iterator[Journal]:
    with Journal.open(db) as j:
        yield j


def test_ok_and_rejected_answers_round_trip(journal: Journal) -> None:
    journal.put(journal.key(ZHANG), OK)
    journal.put(journal.key(LI), REJECTED)
    assert journal.get(journal.key(ZHANG)) == OK
    assert journal.get(journal.key(LI)) == REJECTED
    assert journal.count() == 2


def test_unknown_key_is_none(journal: Journal) -> None:
    assert journal.get(journal.key(ZHANG)) is None
    assert journal.get_many([journal.key(ZHANG)]) == {}


def test_put_replaces_an_older_answer(journal: Journal) -> None:
    key = journal.key(ZHANG)
    journal.put(key, REJECTED)
    journal.put(key, OK)
    assert journal.get(key) == OK
    assert journal.count() == 1


def test_only_final_answers_are_stored(journal: Journal) -> None:
    failed = Answer(Status.FAILED, 10014, "系统内部异常", "", "", "", "", OK.queried_at)
    with pytest.raises(ValueError):
        journal.put(journal.key(ZHANG), failed)
    assert journal.count() == 0


def test_newer_than_cutoff_is_inclusive(journal: Journal) -> None:
    key = journal.key(ZHANG)
    journal.put(key, OK)
    at = _epoch(OK.queried_at)
    assert journal.get(key, newer_than=at) == OK
    assert journal.get(key, newer_than=at - 1) == OK
    assert journal.get(key, newer_than=at + 0.001) is None
    assert journal.get_many([key], newer_than=at + 1) == {}


def test_reuse_keeps_the_original_queried_at_and_orderid(db: Path) -> None:
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    with Journal.open(db) as j:
        again = j.get(j.key(ZHANG))
    assert again is not None
    assert again.queried_at == "2024-05-01T10:00:00+08:00"  # the text, offset and all
    assert again.orderid == OK.orderid


def test_get_many_handles_thousands_of_keys_across_chunks(journal: Journal) -> None:
    people = [Person("王五", f"1101011990030{i:05d}", f"139{i:08d}") for i in range(1203)]
    keys = [journal.key(p) for p in people]
    stored = {k: _answer_at(OK.queried_at, orderid=f"O{i}") for i, k in enumerate(keys) if i % 2}
    journal.put_many(stored.items())
    started = time.perf_counter()
    found = journal.get_many([*keys, *keys])  # duplicates asked for are answered once
    assert time.perf_counter() - started < 1.0
    assert found == stored


def test_key_is_stable_across_reopen_and_differs_per_secret(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "a.db") as a:
        key_a = a.key(ZHANG)
        assert a.key(LI) != key_a
        assert len(key_a) == 32
    with Journal.open(tmp_path / "a.db") as a:
        assert a.key(ZHANG) == key_a
    with Journal.open(tmp_path / "b.db") as b:
        assert b.key(ZHANG) != key_a


def test_no_plaintext_identity_in_any_file(db: Path) -> None:
    needles = [
        needle
        for person in (ZHANG, LI)
        for value in (person.idcard, person.mobile, person.realname)
        for needle in {value.encode("utf-8"), value.encode("utf-16-le")}
    ]

    def assert_clean() -> None:
        files = [f for f in db.parent.iterdir() if f.is_file()]
        assert any(f.name.endswith("-wal") for f in files) or not journal_open
        for f in files:
            raw = f.read_bytes()
            for needle in needles:
                assert needle not in raw, f"{f.name} holds a plaintext identity"

    journal_open = True
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
        j.put_many([(j.key(LI), REJECTED)])
        assert_clean()  # while open: the -wal and -shm hold the fresh writes
    journal_open = False
    assert_clean()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    db = tmp_path / "new" / "journal.sqlite3"
    old = os.umask(0o022)
    try:
        with Journal.open(db) as j:
            j.put(j.key(ZHANG), OK)
            sidecars = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
            assert all(p.exists() for p in sidecars)
            for p in sidecars:
                assert _mode(p) == 0o600, p.name
        assert _mode(db.parent) == 0o700
        for suffix in ("", ".secret", ".lock"):
            assert _mode(db.with_name(db.name + suffix)) == 0o600, suffix
        assert os.umask(0o022) == 0o022  # open() put the caller's umask back
    finally:
        os.umask(old)


def test_second_open_waits_then_says_the_journal_is_busy(db: Path) -> None:
    with Journal.open(db):
        started = time.monotonic()
        with pytest.raises(JournalLockedError, match="another batch-enricher run") as err:
            Journal.open(db, lock_timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert "--state" in str(err.value)
    with Journal.open(db, lock_timeout=0):  # released by close()
        pass


def test_lock_of_a_killed_run_is_released(db: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from batch_enricher.journal import Journal\n"
        "j = Journal.open(Path(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLockedError):
            Journal.open(db, lock_timeout=0.2)
        holder.kill()
        holder.wait()
        with Journal.open(db, lock_timeout=2):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_purge_deletes_only_older_answers(journal: Journal) -> None:
    old, new = journal.key(ZHANG), journal.key(LI)
    journal.put(old, _answer_at("2024-01-01T00:00:00+00:00"))
    journal.put(new, _answer_at("2024-06-01T00:00:00+00:00"))
    assert journal.purge(_epoch("2024-03-01T00:00:00+00:00")) == 1
    assert journal.get(old) is None
    assert journal.get(new) is not None
    assert journal.purge(_epoch("2024-03-01T00:00:00+00:00")) == 0


def test_queried_at_without_offset_is_utc(journal: Journal) -> None:
    key = journal.key(ZHANG)
    journal.put(key, _answer_at("2024-05-01T00:00:00"))
    cutoff = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    assert journal.get(key, newer_than=cutoff) is not None
    assert journal.get(key, newer_than=cutoff + 1) is None


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"name,idcard,mobile\n" * 200)
    with pytest.raises(JournalError, match="cannot open the journal") as err:
        Journal.open(db)
    assert "\n" not in str(err.value)
    assert db.read_bytes() == b"name,idcard,mobile\n" * 200  # untouched
    with Journal.open(db.with_name("other.db")):  # and the lock was let go
        pass
    with pytest.raises(JournalError):  # still refused: no lock left behind
        Journal.open(db, lock_timeout=0)


def test_another_sqlite_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    with pytest.raises(JournalError, match="not a batch-enricher journal"):
        Journal.open(db)


def test_a_newer_schema_is_refused(db: Path) -> None:
    Journal.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal.open(db)


def test_missing_secret_with_stored_answers_is_an_error(db: Path) -> None:
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    db.with_name(db.name + ".secret").unlink()
    with pytest.raises(JournalError, match="secret") as err:
        Journal.open(db)
    assert "--new-journal" in str(err.value)
    assert "nothing was sent" in str(err.value)
    assert not db.with_name(db.name + ".secret").exists()  # not silently recreated


def test_damaged_secret_is_an_error(db: Path) -> None:
    Journal.open(db).close()
    db.with_name(db.name + ".secret").write_bytes(b"short")
    with pytest.raises(JournalError, match="damaged"):
        Journal.open(db)


def test_committed_answer_survives_a_killed_process(db: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from batch_enricher.journal import Journal\n"
        "from batch_enricher.models import Answer, Person, Status\n"
        "j = Journal.open(Path(sys.argv[1]))\n"
        "p = Person('张三丰', '11010119900307803X', '13812345678')\n"
        "j.put(j.key(p), Answer(Status.OK, 0, '成功', 'PAID1', '16', '25', '60',\n"
        "      '2024-05-01T10:00:00+08:00'))\n"
        "os._exit(0)\n"  # no close(), no checkpoint: the answer lives only in the -wal
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30, env=_ENV)
    assert db.with_name(db.name + "-wal").stat().st_size > 0
    with Journal.open(db, lock_timeout=1) as j:
        got = j.get(j.key(ZHANG))
    assert got is not None
    assert got.orderid == "PAID1"


def test_closed_journal_says_so(db: Path) -> None:
    j = Journal.open(db)
    j.close()
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.count()


def test_default_state_path_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "batch-enricher" / "journal.sqlite3"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_state_path().name == "journal.sqlite3"
    assert default_state_path().parent.name == "batch-enricher"
    assert default_state_path().is_absolute()


# -- the journal knows its secret (issue 10) ---------------------------------------------------


def _secret_of(db: Path) -> Path:
    return db.with_name(db.name + ".secret")


def _meta(db: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(db)
    try:
        return {name: bytes(value) for name, value in conn.execute("SELECT name, value FROM meta")}
    finally:
        conn.close()


def test_the_database_names_its_secret_without_holding_it(db: Path) -> None:
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    raw = _secret_of(db).read_bytes()
    secret, journal_id = raw[:32], raw[32:]
    assert len(journal_id) == 16
    meta = _meta(db)
    assert set(meta) == {"fingerprint", "journal_id"}, "the write check left nothing behind"
    label = b"batch-enricher journal fingerprint"
    assert meta["fingerprint"] == hmac.new(secret, label, hashlib.sha256).digest()
    assert meta["journal_id"] == journal_id
    assert secret not in db.read_bytes()
    with Journal.open(db) as j:
        assert j.count() == 1


def test_a_journal_with_no_answers_whose_secret_is_gone_gets_a_new_one(db: Path) -> None:
    Journal.open(db).close()
    old = _secret_of(db).read_bytes()
    _secret_of(db).unlink()
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    new = _secret_of(db).read_bytes()
    assert new != old
    assert _meta(db)["journal_id"] == new[32:]
    with Journal.open(db) as j:  # and the pair is consistent from then on
        assert j.get(j.key(ZHANG)) == OK


def test_an_old_journal_beside_a_newer_secret_is_refused(db: Path) -> None:
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE meta")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(JournalMismatchError, match=r"old \(version 1\) journal") as err:
        Journal.open(db)
    assert "--new-journal" in str(err.value)


def test_an_upgrade_cut_short_is_completed(db: Path) -> None:
    """The database was bound, the crash came before the secret file got the journal id."""
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    secret = _secret_of(db).read_bytes()
    _secret_of(db).write_bytes(secret[:32])
    with Journal.open(db) as j:
        assert j.get(j.key(ZHANG)) == OK
    assert _secret_of(db).read_bytes() == secret


def test_the_secret_of_another_journal_with_the_same_key_is_refused(
    db: Path, tmp_path: Path
) -> None:
    Journal.open(db).close()
    twin = tmp_path / "twin" / "journal.sqlite3"
    twin.parent.mkdir()
    Journal.open(twin).close()
    # The twin is bound to db's secret but has its own journal id: put beside db's secret
    # file, it is a journal swapped for another that merely shares the key.
    conn = sqlite3.connect(twin)
    conn.execute(
        "UPDATE meta SET value = ? WHERE name = 'fingerprint'", (_meta(db)["fingerprint"],)
    )
    conn.commit()
    conn.close()
    _secret_of(twin).write_bytes(_secret_of(db).read_bytes())
    with pytest.raises(JournalMismatchError, match="replaced by another journal"):
        Journal.open(twin)


def test_a_symlink_opens_the_real_journal_under_one_lock(db: Path, tmp_path: Path) -> None:
    Journal.open(db).close()
    link = tmp_path / "link.sqlite3"
    link.symlink_to(db)
    with Journal.open(link) as j:
        assert j.path == db.resolve()
        with pytest.raises(JournalLockedError):
            Journal.open(db, lock_timeout=0)
    assert not _secret_of(link).exists()
    assert not link.with_name(link.name + ".lock").exists()


def test_a_secret_named_after_the_link_is_pointed_at(db: Path, tmp_path: Path) -> None:
    """Earlier versions put the secret beside the path as typed, a symlink included."""
    with Journal.open(db) as j:
        j.put(j.key(ZHANG), OK)
    link = tmp_path / "link.sqlite3"
    link.symlink_to(db)
    _secret_of(db).rename(_secret_of(link))
    with pytest.raises(JournalMismatchError, match="named after the link") as err:
        Journal.open(link)
    assert f"Move it to {_secret_of(db)}" in str(err.value)
    _secret_of(link).rename(_secret_of(db))
    with Journal.open(link) as j:
        assert j.get(j.key(ZHANG)) == OK


def test_new_journal_sets_everything_aside_even_answers_only_in_the_wal(db: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from batch_enricher.journal import Journal\n"
        "from batch_enricher.models import Answer, Person, Status\n"
        "j = Journal.open(Path(sys.argv[1]))\n"
        "p = Person('张三丰', '11010119900307803X', '13812345678')\n"
        "j.put(j.key(p), Answer(Status.OK, 0, '成功', 'PAID1', '16', '25', '60',\n"
        "      '2024-05-01T10:00:00+08:00'))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30, env=_ENV)
    assert db.with_name(db.name + "-wal").stat().st_size > 0

    with Journal.open(db, new_journal=True) as j:
        assert j.count() == 0
        assert j.get(j.key(ZHANG)) is None

    (aside,) = [
        p for p in db.parent.iterdir() if p.name.endswith(".secret") and ".aside-" in p.name
    ]
    old = aside.with_name(aside.name.removesuffix(".secret"))
    with Journal.open(old) as j:  # the pair set aside is whole, its -wal included
        got = j.get(j.key(ZHANG))
    assert got is not None and got.orderid == "PAID1"


def test_new_journal_where_there_is_none_just_creates_one(db: Path) -> None:
    with Journal.open(db, new_journal=True) as j:
        assert j.count() == 0
    assert sorted(p.name for p in db.parent.iterdir()) == [
        "journal.sqlite3",
        "journal.sqlite3.lock",
        "journal.sqlite3.secret",
    ]


def test_a_damaged_journal_is_refused_with_the_way_out(db: Path) -> None:
    with Journal.open(db) as j:
        j.put_many(
            (j.key(Person("王五", f"1101011990030{i:05d}", f"139{i:08d}")), OK) for i in range(400)
        )
    size = db.stat().st_size
    with db.open("r+b") as fh:  # garble everything after the first (schema) page
        fh.seek(4096)
        fh.write(b"\xff" * (size - 4096))
    with pytest.raises(JournalDamagedError) as err:
        Journal.open(db)
    message = str(err.value)
    assert "is damaged" in message and "nothing was sent" in message
    assert f"batch-enricher journal recover --state {db}" in message
    assert "\n" not in message
