"""Planning and dispatch keep their people in the spill (issue 10): same counts, same rows.

Every run-level test runs twice: with the real sizes, and with a cache of 2 people and batches
of 2, so that people leave memory (and are found again in the spill) after a few rows. Memory
itself is measured by the benchmark (bench/run.py --planning), not here.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from batch_enricher import join as join_mod
from batch_enricher import plan as plan_mod
from batch_enricher import spill as spill_mod
from batch_enricher.client import RetryPolicy
from batch_enricher.errors import ScratchError
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Outcome, Person, Status
from batch_enricher.progress import Progress
from batch_enricher.runner import EnrichOptions, enrich
from batch_enricher.sandbox import expected_answer, identity_hash
from batch_enricher.spill import Spill
from batch_enricher.validate import check
from tests.conftest import Served, person, read_csv, write_csv

Sandbox = Callable[..., Served]
P = [list(person(i)) for i in range(12)]
BAD_ID = ["王伟", "12345", "13800000000"]
BAD_MOBILE = ["李芳", P[0][1], "12"]
COLUMNS = ("姓名", "身份证号", "手机号")


@pytest.fixture(params=["real sizes", "tiny cache"])
def sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test as shipped, and again with people leaving memory after two."""
    if request.param == "tiny cache":
        monkeypatch.setattr(plan_mod, "_CACHE_SIZE", 2)
        monkeypatch.setattr(plan_mod, "LOOKUP_BATCH", 2)
        monkeypatch.setattr(join_mod, "LOOKUP_BATCH", 2)
        monkeypatch.setattr(spill_mod, "_BATCH", 2)
    return str(request.param)


class _Recorder(Progress):
    """Keeps what planning told the progress display, and the rows each call advanced."""

    def __init__(self) -> None:
        self.started: tuple[int, int, int, dict[Status, int]] | None = None
        self.advanced: Counter[Status] = Counter()

    def start(
        self,
        total_rows: int,
        done_rows: int,
        calls: int,
        *,
        already: Mapping[Status, int] | None = None,
    ) -> None:
        self.started = (total_rows, done_rows, calls, dict(already or {}))

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self.advanced[status] += rows


def _key(journal: Journal, row: list[str]) -> bytes:
    verdict = check(*row)
    assert isinstance(verdict, Person)
    return journal.key(verdict)


def _answer(status: Status, queried_at: str, orderid: str) -> Answer:
    return Answer(status, 0, "成功", orderid, "16", "17", "38", queried_at)


def _options(tmp_path: Path, server: Served, inputs: list[Path], **extra: object) -> EnrichOptions:
    return EnrichOptions(
        inputs=inputs,
        output_dir=tmp_path / "out",
        key="k",
        endpoint=server.url,
        qps=500,
        concurrency=1,  # calls in plan order, so the order itself is checked
        state=tmp_path / "j.sqlite3",
        handle_signals=False,
        retry=RetryPolicy(max_retries=1, initial=0.001, maximum=0.01),
        **extra,  # type: ignore[arg-type]
    )


def _served(code: int) -> str:
    return "ok" if code == 0 else "rejected"


def test_counts_and_rows_are_those_of_one_pass_over_mixed_files(
    tmp_path: Path, sandbox: Sandbox, sizes: str
) -> None:
    # person 0: 3 rows here + 1 in the other file; 1: twice; 2: answered in the journal, 2 rows
    # here + 1 there; 3: an answer too old for --max-age, so called again; 4, 5, 6: once each.
    one = [P[0], P[1], P[0], BAD_ID, P[2], P[3], P[1], P[4], P[2], P[0], P[5]]
    two = [P[6], P[0], BAD_MOBILE, P[2]]
    first = write_csv(tmp_path / "one.csv", one)
    second = write_csv(tmp_path / "two.csv", two)
    (tmp_path / "out").mkdir()
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        journal.put(_key(journal, P[2]), _answer(Status.OK, "2099-01-01T00:00:00+00:00", "JH2"))
        journal.put(_key(journal, P[3]), _answer(Status.OK, "2001-01-01T00:00:00+00:00", "JH3"))
    server = sandbox()
    progress = _Recorder()

    summary = enrich(_options(tmp_path, server, [first, second]), progress)

    called = [P[0], P[1], P[3], P[4], P[5], P[6]]  # in order of first appearance, across files
    assert [list(r) for r in server.stats.received] == called
    assert set(server.stats.billed_by_identity.values()) <= {1}, "nobody is paid for twice"
    assert (summary.identities, summary.duplicates, summary.reused, summary.to_call) == (
        7,
        6,
        1,
        6,
    )
    assert progress.started == (15, 5, 6, {Status.INVALID: 2, Status.OK: 3})
    assert sum(progress.advanced.values()) == 10
    for src, rows in ((first, one), (second, two)):
        out = read_csv(tmp_path / "out" / f"{src.stem}.enriched.csv")
        assert [[r[c] for c in COLUMNS] for r in out] == rows, "every row, in its order"
        for row, written in zip(rows, out, strict=True):
            if row in (BAD_ID, BAD_MOBILE):
                want = "invalid"
            elif row == P[2]:
                want = "ok"
                assert written["orderid"] == "JH2"
            else:
                want = _served(expected_answer(*row)[0])
            assert written["status"] == want, (row, written)
    counts = Counter(r["status"] for r in read_csv(tmp_path / "out" / "one.enriched.csv"))
    assert sum(counts.values()) == 11 and counts["invalid"] == 1
    assert summary.exit_code == 0


def test_a_dry_run_counts_the_same_with_people_out_of_memory(tmp_path: Path, sizes: str) -> None:
    rows = [P[i % 7] for i in range(30)] + [BAD_ID] + [P[i] for i in range(7, 12)]
    src = write_csv(tmp_path / "in.csv", rows)
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        journal.put(_key(journal, P[1]), _answer(Status.OK, "2099-01-01T00:00:00+00:00", "JH1"))
    options = EnrichOptions(
        inputs=[src], dry_run=True, state=tmp_path / "j.sqlite3", handle_signals=False
    )

    summary = enrich(options)

    assert (summary.identities, summary.duplicates, summary.reused, summary.to_call) == (
        12,
        23,
        1,
        11,
    )
    assert summary.max_billable == 11
    # person 1's rows (30 // 7 + 1 of them) are answered from the journal; the rest would be sent
    assert summary.count(Status.OK) == 5
    assert summary.count(Status.SKIPPED) == 30
    assert summary.count(Status.INVALID) == 1


def test_a_stopped_dispatch_still_writes_every_row(
    tmp_path: Path, sandbox: Sandbox, sizes: str
) -> None:
    people = [P[i] for i in range(10)]
    one = people + people[:5]
    two = people[5:] + people
    first = write_csv(tmp_path / "a.csv", one)
    second = write_csv(tmp_path / "b.csv", two)
    (tmp_path / "out").mkdir()
    server = sandbox()

    summary = enrich(_options(tmp_path, server, [first, second], max_billed=2))

    assert server.stats.billed == 2
    sent = [list(r) for r in server.stats.received]
    assert sent == people[: len(sent)], "the first people in plan order, each once"
    answers: dict[str, str] = {}
    for src, rows in ((first, one), (second, two)):
        out = read_csv(tmp_path / "out" / f"{src.stem}.enriched.csv")
        assert [[r[c] for c in COLUMNS] for r in out] == rows
        for row, written in zip(rows, out, strict=True):
            if row in sent:
                assert written["status"] == _served(expected_answer(*row)[0])
                # the same answer on every row of the person, in both files
                assert answers.setdefault(row[1], written["orderid"]) == written["orderid"]
            else:
                assert written["status"] == "skipped"
                assert written["error_reason"].startswith("not sent:")
    assert summary.exit_code == 3


def test_failures_come_back_from_the_spill_to_every_row_of_the_person(
    tmp_path: Path, sandbox: Sandbox, sizes: str
) -> None:
    rows = [P[0], P[1], P[2], P[1], P[3], P[1]]
    src = write_csv(tmp_path / "in.csv", rows)
    (tmp_path / "out").mkdir()
    server = sandbox(fail_codes={P[1][1]: 10014})  # an internal error: transient, retried once

    summary = enrich(_options(tmp_path, server, [src]))

    out = read_csv(tmp_path / "out" / "in.enriched.csv")
    assert [r["status"] for r in out if r["身份证号"] == P[1][1]] == ["failed"] * 3
    assert all(
        "rerun" in r["error_reason"] and r["error_code"] == "10014"
        for r in out
        if r["身份证号"] == P[1][1]
    )
    others = [r for r in out if r["身份证号"] != P[1][1]]
    assert [r["status"] for r in others] == [
        _served(expected_answer(*row)[0]) for row in rows if row != P[1]
    ]
    assert server.stats.billed_by_identity[identity_hash(*P[1])] == 0
    assert summary.exit_code == 3


# -- the store itself ----------------------------------------------------------------------------


def _person(i: int) -> Person:
    name, idcard, mobile = person(i)
    return Person(realname=name, idcard=idcard, mobile=mobile)


def test_the_store_gives_people_to_call_back_in_order_with_their_rows() -> None:
    with Spill() as spill:
        spill.add(
            [
                (b"k1" * 16, None, _person(1), 2),
                (b"k2" * 16, Status.OK, None, 0),
                (b"k3" * 16, None, _person(3), 1),
            ]
        )
        spill.add_rows([(5, b"k3" * 16)])

        assert spill.known([b"k2" * 16, b"k3" * 16, b"zz" * 16]) == {
            b"k2" * 16: Status.OK,
            b"k3" * 16: None,
        }
        assert list(spill.to_call()) == [(b"k1" * 16, _person(1), 2), (b"k3" * 16, _person(3), 6)]
        assert spill.this_run([b"k1" * 16, b"k3" * 16]) == (set(), {})

        spill.answered(b"k1" * 16)
        spill.failed(b"k3" * 16, Outcome(Status.FAILED, 10014, "busy; rerun"))

        assert spill.this_run([b"k1" * 16, b"k3" * 16, b"k2" * 16]) == (
            {b"k1" * 16},
            {b"k3" * 16: Outcome(Status.FAILED, 10014, "busy; rerun")},
        )


def test_a_name_with_separators_survives_the_seal() -> None:
    odd = Person(realname="阿\0卜|杜", idcard=person(1)[1], mobile=person(1)[2])
    with Spill() as spill:
        spill.add([(b"k" * 32, None, odd, 1)])
        assert [p for _, p, _ in spill.to_call()] == [odd]


def _scratch_files() -> dict[str, str]:
    """This process's open descriptors on SQLite temporary files: fd → link target."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "etilqs_" in target:
            found[fd] = target
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_what_reaches_the_disk_is_unlinked_private_and_holds_no_person() -> None:
    before = _scratch_files()
    people = [_person(i) for i in range(3000)]
    with Spill(cache_kib=64) as spill:  # a small cache, so pages go to the file
        spill.add([(i.to_bytes(32, "big"), None, p, 1) for i, p in enumerate(people)])
        files = {fd: t for fd, t in _scratch_files().items() if fd not in before}

        assert files, "the store spilled to a file"
        for fd, target in files.items():
            assert target.endswith(" (deleted)"), "unlinked while open: no name on disk"
            assert stat.S_IMODE(os.stat(f"/proc/self/fd/{fd}").st_mode) == 0o600
            with open(f"/proc/self/fd/{fd}", "rb") as fh:
                data = fh.read()
            assert len(data) > 64 * 1024
            for p in people[::7]:
                for field in (p.idcard, p.mobile, p.realname):
                    assert field.encode() not in data, "persons are sealed before they are stored"
        assert [p for _, p, _ in spill.to_call()] == people

    assert not set(_scratch_files()) - set(before), "closed: the space is freed"


def test_a_full_scratch_folder_is_one_line_that_says_what_to_do() -> None:
    with Spill() as spill:
        conn = spill._conn
        assert conn is not None
        conn.execute("PRAGMA max_page_count = 3")  # as if the folder's disk were full
        with pytest.raises(ScratchError) as caught:
            spill.add([(i.to_bytes(32, "big"), None, _person(i), 1) for i in range(2000)])

    message = str(caught.value)
    assert "\n" not in message
    assert "full" in message and "SQLITE_TMPDIR" in message and "journal" in message
    assert person(0)[1] not in message
