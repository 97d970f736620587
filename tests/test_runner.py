"""The runner's own rules: where outputs go, and what happens when the journal cannot be written."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from batch_enricher.errors import ConfigError, JournalError, OutputError
from batch_enricher.journal import Journal
from batch_enricher.models import Answer
from batch_enricher.runner import EnrichOptions, default_output, enrich, resolve_outputs
from tests.conftest import Served, person, write_csv


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("customers.csv", "customers.enriched.csv"),
        ("customers.tsv", "customers.enriched.tsv"),
        ("customers.xlsx", "customers.enriched.xlsx"),
        ("legacy.xls", "legacy.enriched.xlsx"),
        ("macro.xlsm", "macro.enriched.xlsm"),  # the same workbook, macros kept
        ("export.txt", "export.enriched.csv"),
    ],
)
def test_default_output_sits_beside_the_input_in_a_format_we_write(
    name: str, expected: str
) -> None:
    assert default_output(Path("in") / name, None) == Path("in") / expected
    assert default_output(Path("in") / name, Path("out")) == Path("out") / expected


def test_an_output_never_overwrites_an_input(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    with pytest.raises(OutputError, match="is an input file"):
        resolve_outputs(EnrichOptions(inputs=[src], output=tmp_path / "." / "a.csv"))


def test_two_inputs_never_share_an_output(tmp_path: Path) -> None:
    inputs = [tmp_path / "x" / "a.csv", tmp_path / "y" / "a.csv"]
    with pytest.raises(OutputError, match="both be written"):
        resolve_outputs(EnrichOptions(inputs=inputs, output_dir=tmp_path / "out"))
    with pytest.raises(ConfigError, match="single input"):
        resolve_outputs(EnrichOptions(inputs=inputs, output=tmp_path / "o.csv"))


def test_a_journal_that_cannot_be_written_stops_all_sending(
    tmp_path: Path, sandbox: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sandbox(latency_ms=5)
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(60)])
    real_put_many = Journal.put_many
    puts: list[bytes] = []

    def failing_put_many(self: Journal, items: Iterable[tuple[bytes, Answer]]) -> None:
        batch = list(items)
        if len(puts) >= 3:
            raise JournalError("disk full")
        puts.extend(key for key, _ in batch)
        real_put_many(self, batch)

    monkeypatch.setattr(Journal, "put_many", failing_put_many)
    options = EnrichOptions(
        inputs=[src],
        output=tmp_path / "o.csv",
        key="k",
        endpoint=server.url,
        qps=200,
        concurrency=4,
        state=tmp_path / "j.sqlite3",
    )

    with pytest.raises(JournalError, match="disk full"):
        enrich(options)

    # Kept, plus at most one per worker: in flight, or in the commit that failed.
    assert server.stats.requests <= len(puts) + 4, "no one kept sending once answers were lost"
    assert not (tmp_path / "o.csv").exists()


def test_a_missing_output_folder_in_o_is_refused_before_anything_is_paid(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    with pytest.raises(OutputError, match=r"folder does not exist: .*nope"):
        resolve_outputs(EnrichOptions(inputs=[src], output=tmp_path / "nope" / "o.csv"))
    assert not (tmp_path / "nope").exists(), "a typo in -o does not make folders"


def test_a_missing_output_dir_is_made_private_before_anything_is_paid(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    folder = tmp_path / "new" / "enriched"
    outputs = resolve_outputs(EnrichOptions(inputs=[src], output_dir=folder))
    assert outputs == [folder / "a.enriched.csv"]
    for made in (folder, folder.parent):  # like mkdir -p, each readable only by the user
        assert made.is_dir()
        assert made.stat().st_mode & 0o777 == 0o700
    assert resolve_outputs(EnrichOptions(inputs=[src], output_dir=folder)) == outputs


def test_a_dry_run_makes_no_output_dir(tmp_path: Path) -> None:
    dry = EnrichOptions(inputs=[tmp_path / "a.csv"], output_dir=tmp_path / "nope", dry_run=True)
    assert resolve_outputs(dry), "a dry run writes nothing, so it needs no folder"
    assert not (tmp_path / "nope").exists()


def test_an_output_dir_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        resolve_outputs(EnrichOptions(inputs=[src], output_dir=tmp_path / "file"))
    with pytest.raises(OutputError, match=r"cannot create the output folder .*: Not a directory"):
        resolve_outputs(EnrichOptions(inputs=[src], output_dir=tmp_path / "file" / "out"))


def test_the_journal_never_shares_a_path_with_an_input_or_output(tmp_path: Path) -> None:
    src, out = tmp_path / "a.csv", tmp_path / "o.csv"
    with pytest.raises(OutputError, match="is an output of this run"):
        resolve_outputs(EnrichOptions(inputs=[src], output=out, state=out))
    with pytest.raises(OutputError, match="is an input of this run"):
        resolve_outputs(EnrichOptions(inputs=[src], output=out, state=src))
