"""`batch-enricher journal check` and `journal recover`: reports, exit codes, one-line errors."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Person, Status

Run = Callable[..., Result]

OK = Answer(Status.OK, 0, "成功", "X1", "16", "25", "60", "2024-05-01T10:00:00+08:00")
PEOPLE = [Person("王五", f"1101011990030{i:05d}", f"139{i:08d}") for i in range(5)]


@pytest.fixture
def filled(state: Path) -> Path:
    """A journal holding five answers."""
    with Journal.open(state) as journal:
        journal.put_many((journal.key(p), OK) for p in PEOPLE)
    return state


def _fields(result: Result) -> dict[str, str]:
    return {
        label: value.strip()
        for label, _, value in (line.partition(":") for line in result.output.splitlines())
    }


def test_check_reports_a_healthy_journal(run: Run, filled: Path) -> None:
    result = run("journal", "check", "--state", str(filled))
    assert result.exit_code == 0, result.output
    assert _fields(result) == {
        "journal": str(filled),
        "integrity": "ok",
        "answers": "5",
        "schema": "version 2",
        "secret": "belongs to this journal",
    }


def test_check_says_a_swapped_secret_does_not_belong(run: Run, filled: Path) -> None:
    filled.with_name(filled.name + ".secret").write_bytes(os.urandom(32))
    result = run("journal", "check", "--state", str(filled))
    assert result.exit_code == 1
    fields = _fields(result)
    assert fields["integrity"] == "ok"
    assert fields["answers"] == "5"
    assert "do not belong together" in fields["secret"]
    assert "--new-journal" in fields["next"]


def test_check_says_a_deleted_journal_is_missing(run: Run, filled: Path) -> None:
    filled.unlink()
    result = run("journal", "check", "--state", str(filled))
    assert result.exit_code == 1
    assert "is missing but its secret" in _fields(result)["secret"]
    assert not filled.exists(), "checking created nothing"


def test_check_of_a_place_with_no_journal_exits_1(run: Run, state: Path) -> None:
    result = run("journal", "check", "--state", str(state))
    assert result.exit_code == 1
    assert "does not exist" in _fields(result)["journal"]
    assert not state.parent.exists(), "checking created nothing"


def test_check_of_a_version_1_journal_says_it_will_be_upgraded(run: Run, filled: Path) -> None:
    conn = sqlite3.connect(filled)
    conn.execute("DROP TABLE meta")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    secret = filled.with_name(filled.name + ".secret")
    secret.write_bytes(secret.read_bytes()[:32])
    result = run("journal", "check", "--state", str(filled))
    assert result.exit_code == 0, result.output
    assert _fields(result)["schema"] == "version 1"
    assert "binds it to its secret" in _fields(result)["note"]


def test_recover_of_a_healthy_journal_keeps_every_answer(run: Run, filled: Path) -> None:
    result = run("journal", "recover", "--state", str(filled))
    assert result.exit_code == 0, result.output
    assert "saved 5 answer(s)" in result.output
    assert "every answer could be read" in result.output
    with Journal.open(filled) as journal:
        assert journal.get_many(journal.key(p) for p in PEOPLE) == {
            journal.key(p): OK for p in PEOPLE
        }


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        (lambda p: p.unlink(), "there is no journal"),
        (lambda p: p.with_name(p.name + ".secret").unlink(), "secret"),
        (lambda p: p.with_name(p.name + ".secret").write_bytes(os.urandom(32)), "belong"),
    ],
    ids=["no-journal", "no-secret", "other-secret"],
)
def test_recover_refuses_in_one_line_and_moves_nothing(
    run: Run, filled: Path, setup: Callable[[Path], object], said: str
) -> None:
    setup(filled)
    before = sorted(p.name for p in filled.parent.iterdir())
    result = run("journal", "recover", "--state", str(filled))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert result.output.count("\n") == 1
    assert said in result.output
    assert sorted(p.name for p in filled.parent.iterdir()) == before


def test_recover_waits_for_a_running_job(run: Run, filled: Path) -> None:
    with Journal.open(filled):
        result = run("journal", "recover", "--state", str(filled), "--lock-timeout", "0")
    assert result.exit_code == 1
    assert "another batch-enricher run" in result.output


def test_journal_help_has_examples(run: Run) -> None:
    for args in (["journal"], ["journal", "check"], ["journal", "recover"]):
        result = run(*args, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output
    enrich = run("enrich", "--help")
    assert "--new-journal" in enrich.output


def test_check_of_a_file_that_is_no_journal_says_so(run: Run, state: Path) -> None:
    state.parent.mkdir(parents=True)
    conn = sqlite3.connect(state)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    result = run("journal", "check", "--state", str(state))
    assert result.exit_code == 1
    assert "not a batch-enricher journal" in _fields(result)["problem"]


def test_recover_with_nothing_readable_leaves_the_journal_in_place(run: Run, state: Path) -> None:
    with Journal.open(state) as journal:
        people = (Person("王五", f"1101011990030{i:05d}", f"139{i:08d}") for i in range(300))
        journal.put_many((journal.key(p), OK) for p in people)
    conn = sqlite3.connect(state)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'answers'").fetchone()
    conn.close()
    with state.open("r+b") as fh:  # the table's root page: no answer can be reached
        fh.seek((root - 1) * 4096)
        fh.write(b"\xff" * 4096)
    before = {p.name: p.read_bytes() for p in state.parent.iterdir()}

    result = run("journal", "recover", "--state", str(state))

    assert result.exit_code == 1
    assert "nothing can be read from the journal" in result.output
    assert "--new-journal" in result.output
    assert {p.name: p.read_bytes() for p in state.parent.iterdir()} == before
