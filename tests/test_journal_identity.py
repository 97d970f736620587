"""The journal knows itself (issue 10): a lost, emptied or swapped journal or secret, a symlink
around the lock, a damaged or read-only journal and an old version-1 journal, each run end to
end against the emulator. Billing is judged by what the server saw (`SandboxStats`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Person, Status
from batch_enricher.sandbox import expected_answer
from tests.conftest import Served, fast, person, write_csv

EnrichAt = Callable[..., Result]
Run = Callable[..., Result]
Sandbox = Callable[..., Served]

REPO = Path(__file__).resolve().parent.parent
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


# -- helpers ---------------------------------------------------------------------------------


def _input(tmp_path: Path, n: int) -> Path:
    return write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(n)])


def _billable(n: int) -> int:
    return sum(1 for i in range(n) if expected_answer(*person(i))[0] == 0)


def _secret(state: Path) -> Path:
    return state.with_name(state.name + ".secret")


def _error_line(result: Result) -> str:
    """The one `Error:` line of a refused run (and nothing like a traceback anywhere)."""
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _aside(state: Path, label: str = "aside") -> list[Path]:
    """The journals set aside beside `state` (each the stem its -wal and .secret hang from)."""
    stem = re.compile(rf"{re.escape(state.name)}\.{label}-\d{{8}}T\d{{6}}Z(-\d+)?")
    found = {m.group(0) for p in state.parent.iterdir() if (m := stem.match(p.name))}
    return sorted(state.parent / name for name in found)


def _enrich(server: Served, src: Path, out: Path, state: Path, *extra: str) -> list[str]:
    """argv of `python -m batch_enricher enrich ...` against `server`, for a subprocess."""
    return [sys.executable, "-m", "batch_enricher", "enrich", str(src), "-o", str(out),
            "--state", str(state), "--key", "k", "--endpoint", server.url, "-q",
            *fast(*extra)]  # fmt: skip


def _without_root_powers(argv: list[str]) -> list[str]:
    """Run `argv` so file permissions apply to it (root ignores them unless it drops the
    capabilities that override them)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]


_OTHER = Answer(Status.OK, 0, "成功", "X1", "1", "2", "30", "2024-05-01T00:00:00+00:00")


@pytest.fixture
def paid(
    tmp_path: Path, sandbox: Sandbox, enrich_at: EnrichAt, state: Path
) -> Iterator[tuple[Served, Path]]:
    """A server and a 40-person input that one run has already paid for in full."""
    server = sandbox()
    src = _input(tmp_path, 40)
    first = enrich_at(server, str(src), "-o", str(tmp_path / "first.csv"))
    assert first.exit_code == 0, first.output
    assert server.stats.requests == 40
    assert server.stats.billed == _billable(40)
    yield server, src


# -- a journal and a secret that no longer belong together --------------------------------------


def _empty(state: Path, tmp_path: Path) -> None:
    with state.open("r+b") as fh:
        fh.truncate(0)


def _delete(state: Path, tmp_path: Path) -> None:
    state.unlink()


def _replace_journal(state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "journal.sqlite3"
    with Journal.open(other) as journal:
        journal.put(journal.key(Person("王伟", "110101196001010019", "13000000000")), _OTHER)
    shutil.copyfile(other, state)


def _replace_secret(state: Path, tmp_path: Path) -> None:
    _secret(state).write_bytes(os.urandom(32))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_empty, "is empty but its secret"),
        (_delete, "is missing but its secret"),
        (_replace_journal, "do not belong together"),
        (_replace_secret, "do not belong together"),
    ],
    ids=["emptied", "deleted", "journal-replaced", "secret-replaced"],
)
def test_a_lost_or_swapped_journal_sends_nothing_until_started_over_deliberately(
    paid: tuple[Served, Path],
    tmp_path: Path,
    enrich_at: EnrichAt,
    state: Path,
    damage: Callable[[Path, Path], None],
    said: str,
) -> None:
    server, src = paid
    damage(state, tmp_path)
    left = {p.name: p.read_bytes() for p in (state, _secret(state)) if p.exists()}

    refused = enrich_at(server, str(src), "-o", str(tmp_path / "again.csv"))

    assert refused.exit_code == 1, refused.output
    assert server.stats.requests == 40, "nothing was sent"
    line = _error_line(refused)
    assert said in line
    assert "nothing was sent" in line
    assert "--new-journal" in line
    assert not (tmp_path / "again.csv").exists()
    assert {p.name: p.read_bytes() for p in (state, _secret(state)) if p.exists()} == left

    fresh = enrich_at(server, str(src), "-o", str(tmp_path / "fresh.csv"), "--new-journal")

    assert fresh.exit_code == 0, fresh.output
    assert server.stats.requests == 80, "a new journal: everyone asked (and paid for) again"
    (aside,) = _aside(state)
    kept = {p.name.replace(aside.name, state.name): p.read_bytes() for p in _aside_files(aside)}
    for name, data in left.items():
        assert kept[name] == data, f"{name} was moved aside unchanged, not deleted"

    after = enrich_at(server, str(src), "-o", str(tmp_path / "after.csv"))
    assert after.exit_code == 0, after.output
    assert server.stats.requests == 80, "the new journal is used from then on"


def _aside_files(aside: Path) -> list[Path]:
    return [p for p in aside.parent.iterdir() if p.name.startswith(aside.name)]


def test_new_journal_on_a_healthy_journal_keeps_the_old_one_usable(
    paid: tuple[Served, Path], tmp_path: Path, enrich_at: EnrichAt, state: Path
) -> None:
    server, src = paid
    fresh = enrich_at(server, str(src), "-o", str(tmp_path / "fresh.csv"), "--new-journal")
    assert fresh.exit_code == 0, fresh.output
    (aside,) = _aside(state)
    assert f"moved aside to {aside}" in fresh.output
    assert stat.S_IMODE(_secret(aside).stat().st_mode) == 0o600
    # The pair set aside is still a whole journal: pointed at, it answers everyone.
    old = enrich_at(server, str(src), "-o", str(tmp_path / "old.csv"), "--state", str(aside))
    assert old.exit_code == 0, old.output
    assert server.stats.requests == 80


def test_a_brand_new_location_is_created_silently(
    tmp_path: Path, sandbox: Sandbox, enrich_at: EnrichAt, state: Path
) -> None:
    server = sandbox()
    result = enrich_at(server, str(_input(tmp_path, 3)), "-o", str(tmp_path / "o.csv"), "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert state.exists()
    assert len(_secret(state).read_bytes()) == 48  # the secret, then the journal id


# -- symlinks ----------------------------------------------------------------------------------


def test_a_symlink_and_the_real_path_share_one_lock(
    tmp_path: Path, sandbox: Sandbox, enrich_at: EnrichAt, state: Path
) -> None:
    server = sandbox()
    src = _input(tmp_path, 20)
    link = tmp_path / "link.sqlite3"
    Journal.open(state).close()
    link.symlink_to(state)

    with Journal.open(state):  # a run through the real path holds the journal
        blocked = enrich_at(server, str(src), "-o", str(tmp_path / "o.csv"),
                            "--state", str(link), "--lock-timeout", "0.3")  # fmt: skip

    assert blocked.exit_code == 1, blocked.output
    assert "another batch-enricher run is using the journal" in _error_line(blocked)
    assert server.stats.requests == 0

    through_link = enrich_at(server, str(src), "-o", str(tmp_path / "a.csv"), "--state", str(link))
    assert through_link.exit_code == 0, through_link.output
    real = enrich_at(server, str(src), "-o", str(tmp_path / "b.csv"))
    assert real.exit_code == 0, real.output
    assert server.stats.requests == 20, "the second run reused what the first paid for"
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("link"))
    assert names == ["link.sqlite3"], "no lock or secret named after the link"


def test_two_runs_at_once_through_a_symlink_and_the_real_path_pay_nobody_twice(
    tmp_path: Path, sandbox: Sandbox, state: Path
) -> None:
    server = sandbox(latency_ms=20.0)
    src = _input(tmp_path, 30)
    Journal.open(state).close()
    link = tmp_path / "link.sqlite3"
    link.symlink_to(state)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for journal, out, log in zip((state, link), ("a.csv", "b.csv"), logs, strict=True):
        argv = _enrich(server, src, tmp_path / out, journal, "--lock-timeout", "60")
        with log.open("wb") as fh:
            procs.append(subprocess.Popen(argv, cwd=REPO, env=_ENV, stdout=fh, stderr=fh))
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=120) == 0, log.read_text()

    assert server.stats.requests == 30
    assert set(server.stats.billed_by_identity.values()) == {1}, "nobody paid twice"


# -- damaged journals --------------------------------------------------------------------------


def _leaf_pages(db: Path, table: str) -> tuple[list[int], int]:
    """The leaf pages of `table`'s b-tree, read from the file format itself, and the page size."""
    conn = sqlite3.connect(db)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    data = db.read_bytes()
    size = int.from_bytes(data[16:18], "big")
    size = 65536 if size == 1 else size
    leaves, todo = [], [root]
    while todo:
        page = todo.pop()
        base = (page - 1) * size
        header = base + (100 if page == 1 else 0)
        if data[header] in (0x0A, 0x0D):  # index / table leaf
            leaves.append(page)
            continue
        assert data[header] in (0x02, 0x05), "an interior page"
        cells = int.from_bytes(data[header + 3 : header + 5], "big")
        todo.append(int.from_bytes(data[header + 8 : header + 12], "big"))
        for i in range(cells):
            at = base + int.from_bytes(data[header + 12 + 2 * i : header + 14 + 2 * i], "big")
            todo.append(int.from_bytes(data[at : at + 4], "big"))
    return sorted(leaves), size


def _corrupt_two_leaves(db: Path) -> int:
    """Overwrite two leaf pages of the answers with garbage; returns how many answers they held."""
    assert not db.with_name(db.name + "-wal").exists(), "every answer is in the main file"
    leaves, size = _leaf_pages(db, "answers")
    assert len(leaves) >= 4, leaves
    data = db.read_bytes()
    held = 0
    with db.open("r+b") as fh:
        for page in (leaves[1], leaves[-2]):
            base = (page - 1) * size
            held += int.from_bytes(data[base + 3 : base + 5], "big")  # the leaf's cell count
            fh.seek(base)
            fh.write(b"\xde\xad" * (size // 2))
    return held


def test_a_damaged_journal_sends_nothing_and_recover_saves_the_readable_answers(
    tmp_path: Path, sandbox: Sandbox, enrich_at: EnrichAt, run: Run, state: Path
) -> None:
    server = sandbox()
    n = 300
    src = _input(tmp_path, n)
    first = enrich_at(server, str(src), "-o", str(tmp_path / "1.csv"))
    assert first.exit_code == 0, first.output
    assert server.stats.requests == n
    on_damaged_pages = _corrupt_two_leaves(state)
    damaged_bytes = state.read_bytes()

    refused = enrich_at(server, str(src), "-o", str(tmp_path / "2.csv"))

    assert refused.exit_code == 1, refused.output
    assert server.stats.requests == n, "nothing was sent"
    line = _error_line(refused)
    assert f"the journal {state} is damaged" in line
    assert f"batch-enricher journal recover --state {state}" in line

    check = run("journal", "check", "--state", str(state))
    assert check.exit_code == 1, check.output
    assert "damaged" in check.output and "journal recover" in check.output

    recover = run("journal", "recover", "--state", str(state))

    assert recover.exit_code == 0, recover.output
    saved = int(recover.output.split("saved ")[1].split(" ")[0])
    lost = int(recover.output.split("; ")[1].split(" ")[0])
    assert lost == on_damaged_pages, "only the answers on the damaged pages are lost"
    assert saved + lost == n
    (damaged,) = _aside(state, "damaged")
    assert damaged.read_bytes() == damaged_bytes, "the damaged journal is kept as it was"
    assert run("journal", "check", "--state", str(state)).exit_code == 0

    rerun = enrich_at(server, str(src), "-o", str(tmp_path / "3.csv"))

    assert rerun.exit_code == 0, rerun.output
    assert server.stats.requests == n + lost, "only the unreadable answers are asked again"
    twice = sum(1 for count in server.stats.billed_by_identity.values() if count > 1)
    assert twice <= lost


def test_a_journal_that_reads_but_cannot_be_written_is_refused_before_anything_is_sent(
    tmp_path: Path, sandbox: Sandbox, enrich_at: EnrichAt, run: Run, state: Path
) -> None:
    """A damaged free-page list: every read works, the first write that needs a page fails.
    Before the write check each run paid up to --concurrency calls, then lost them."""
    server = sandbox()
    first = enrich_at(server, str(_input(tmp_path, 400)), "-o", str(tmp_path / "1.csv"))
    assert first.exit_code == 0, first.output
    conn = sqlite3.connect(state)
    conn.execute("DELETE FROM answers WHERE key < x'C0'")  # as a purge would: pages freed
    conn.commit()
    (kept,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    conn.close()
    assert free > 0
    data = bytearray(state.read_bytes())
    size, trunk = int.from_bytes(data[16:18], "big"), int.from_bytes(data[32:36], "big")
    at = (trunk - 1) * size + 4
    data[at : at + 4] = (10**6).to_bytes(4, "big")  # more free pages than the page can list
    state.write_bytes(bytes(data))
    newcomers = write_csv(tmp_path / "new.csv", [list(person(i)) for i in range(400, 500)])

    refused = enrich_at(server, str(newcomers), "-o", str(tmp_path / "2.csv"))

    assert refused.exit_code == 1, refused.output
    assert server.stats.requests == 400, "nothing paid for and then lost"
    assert "is damaged" in _error_line(refused)

    recover = run("journal", "recover", "--state", str(state))
    assert recover.exit_code == 0, recover.output
    assert f"saved {kept} answer(s)" in recover.output
    assert "every answer could be read" in recover.output
    rerun = enrich_at(server, str(newcomers), "-o", str(tmp_path / "3.csv"))
    assert rerun.exit_code == 0, rerun.output
    assert server.stats.requests == 500


def test_a_read_only_journal_is_refused_before_anything_is_sent(
    paid: tuple[Served, Path], tmp_path: Path, state: Path
) -> None:
    server, src = paid
    argv = _without_root_powers(_enrich(server, src, tmp_path / "ro.csv", state))
    state.chmod(0o400)
    try:
        done = subprocess.run(argv, cwd=REPO, env=_ENV, capture_output=True, text=True, timeout=60)
        assert stat.S_IMODE(state.stat().st_mode) == 0o400, "left read-only, not made writable"
    finally:
        state.chmod(0o600)
    assert done.returncode == 1, done.stderr
    assert server.stats.requests == 40, "nothing was sent"
    assert f"the journal {state} cannot be written" in done.stderr
    assert "nothing was sent" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_journal_in_a_read_only_folder_is_refused_before_anything_is_sent(
    paid: tuple[Served, Path], tmp_path: Path, enrich_at: EnrichAt, state: Path
) -> None:
    server, src = paid
    argv = _without_root_powers(_enrich(server, src, tmp_path / "ro.csv", state))
    state.parent.chmod(0o500)
    try:
        done = subprocess.run(argv, cwd=REPO, env=_ENV, capture_output=True, text=True, timeout=60)
    finally:
        state.parent.chmod(0o700)
    assert done.returncode == 1, done.stderr
    assert server.stats.requests == 40, "nothing was sent: no answer paid for and then lost"
    assert "cannot be written" in done.stderr and "nothing was sent" in done.stderr
    again = enrich_at(server, str(src), "-o", str(tmp_path / "again.csv"))
    assert again.exit_code == 0, again.output
    assert server.stats.requests == 40


# -- version 1 ---------------------------------------------------------------------------------


def _make_version_1(state: Path) -> bytes:
    """Turn a journal into what version 1 wrote: no meta table, a 32-byte secret file."""
    conn = sqlite3.connect(state)
    conn.execute("DROP TABLE meta")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    secret = _secret(state).read_bytes()[:32]
    _secret(state).write_bytes(secret)
    return secret


def test_a_version_1_journal_is_upgraded_and_keeps_its_answers(
    paid: tuple[Served, Path], tmp_path: Path, enrich_at: EnrichAt, state: Path
) -> None:
    server, src = paid
    secret = _make_version_1(state)

    again = enrich_at(server, str(src), "-o", str(tmp_path / "again.csv"))

    assert again.exit_code == 0, again.output
    assert server.stats.requests == 40, "no one asked again"
    conn = sqlite3.connect(state)
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    conn.close()
    assert version == 2
    label = b"batch-enricher journal fingerprint"
    assert meta["fingerprint"] == hmac.new(secret, label, hashlib.sha256).digest()
    stored = _secret(state).read_bytes()
    assert stored == secret + meta["journal_id"]
    assert stat.S_IMODE(_secret(state).stat().st_mode) == 0o600
    assert secret not in state.read_bytes(), "never the secret itself in the database"

    _replace_secret(state, tmp_path)  # and from now on, the pair is checked
    refused = enrich_at(server, str(src), "-o", str(tmp_path / "refused.csv"))
    assert refused.exit_code == 1
    assert server.stats.requests == 40
