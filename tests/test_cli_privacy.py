"""Privacy and safety: masked logs, a keyed private journal, POST-only requests, inert cells."""

from __future__ import annotations

import csv
import stat
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import openpyxl
from aiohttp import web
from click.testing import Result

from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Person, Status
from batch_enricher.privacy import PiiFilter, scrub
from batch_enricher.sandbox import SandboxConfig, make_app
from tests.conftest import Served, fast, person, write_csv

Run = Callable[..., Result]
KEY = "k3y-S3CRET-0123456789abcdef"
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def _people(n: int) -> list[tuple[str, str, str]]:
    return [person(i) for i in range(n)]


def test_verbose_log_holds_no_id_mobile_name_or_key(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox(key=KEY, fault_rate=0.3, seed=3)
    people = _people(30)
    bad = [
        [
            "赵六",
            people[0][1][:-1] + "0" if people[0][1][-1] != "0" else people[0][1][:-1] + "1",
            "13912345678",
        ],
        ["钱七", "110101199003078039", "1391234567"],
        ["孙八", "11010119900307803X", "+86 139-1234-5679"],
    ]
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people] + bad)
    log = tmp_path / "run.log"

    result = enrich_at(
        server,
        str(src),
        "-o",
        str(tmp_path / "out.csv"),
        "-v",
        "--log-file",
        str(log),
        "--max-retries",
        "8",
        key=KEY,
    )

    assert result.exit_code == 0, result.output
    assert server.stats.requests > len(people), "faults were injected, so retries were logged"
    text = result.stdout + result.stderr + log.read_text(encoding="utf-8")
    assert "retrying" in text, "the DEBUG retry lines are there, masked"
    for name, idcard, mobile in people + [tuple(b) for b in bad]:  # type: ignore[misc]
        assert idcard not in text
        assert mobile not in text
        assert mobile.replace("+86 ", "").replace("-", "") not in text
        assert name not in text
    assert KEY not in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_journal_files_hold_no_plaintext_and_are_private(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run, state: Path
) -> None:
    server = sandbox()
    people = _people(20)
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])
    out = tmp_path / "out.xlsx"

    result = run(
        "enrich", str(src), "-o", str(out), "--key", KEY, "--endpoint", server.url, *fast()
    )

    assert result.exit_code == 0, result.output
    files = [p for p in state.parent.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"journal.sqlite3", "journal.sqlite3.secret"}
    blob = b"".join(p.read_bytes() for p in files)
    for name, idcard, mobile in people:
        for value in (name, idcard, mobile, idcard[:14]):
            assert value.encode() not in blob
            assert value.encode("utf-16-le") not in blob
    assert KEY.encode() not in blob
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_every_request_is_a_form_post_with_our_user_agent(
    tmp_path: Path, serve_app: Callable[..., Served], enrich_at: Run
) -> None:
    agents: list[str] = []
    app = make_app(SandboxConfig())

    @web.middleware
    async def record(request: web.Request, handler: Callable[..., object]) -> web.StreamResponse:
        agents.append(request.headers.get("User-Agent", ""))
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        return response

    app.middlewares.append(record)
    server = serve_app(app)
    src = write_csv(tmp_path / "in.csv", [list(p) for p in _people(10)])

    result = enrich_at(
        server,
        str(src),
        "-o",
        str(tmp_path / "o.csv"),
        key=KEY,
    )

    assert result.exit_code == 0, result.output
    stats = server.stats
    assert stats.requests == 10
    assert stats.methods == {"POST": 10}
    assert stats.content_types == {"application/x-www-form-urlencoded": 10}
    assert stats.query_params_seen == 0
    assert all(a.startswith("batch-enricher/") for a in agents), agents


def _formula_input(tmp_path: Path) -> Path:
    name, idcard, mobile = person(3)
    notes = ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x")']
    rows = [[name, idcard, mobile, note] for note in notes]
    rows.append(["=cmd|' /C calc'!A0", idcard, mobile, "ok"])  # a formula where a name should be
    return write_csv(tmp_path / "in.csv", rows, ("姓名", "身份证号", "手机号", "=备注"))


def test_xlsx_output_has_no_formula_cell(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    out = tmp_path / "out.xlsx"
    result = enrich_at(
        server,
        str(_formula_input(tmp_path)),
        "-o",
        str(out),
        key=KEY,
    )
    assert result.exit_code == 0, result.output
    sheet = openpyxl.load_workbook(out).worksheets[0]
    cells = [c for row in sheet.iter_rows() for c in row]
    assert all(c.data_type != "f" for c in cells)
    values = [c.value for c in cells]
    assert "=1+1" in values and "@SUM(A1)" in values, "kept as text, not dropped or altered"
    with zipfile.ZipFile(out) as zf:
        assert "<f>" not in zf.read("xl/worksheets/sheet1.xml").decode()


def test_csv_output_has_no_cell_starting_like_a_formula(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    out = tmp_path / "out.csv"
    result = enrich_at(
        server,
        str(_formula_input(tmp_path)),
        "-o",
        str(out),
        key=KEY,
    )
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8-sig", newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not [c for c in cells if c.startswith(DANGEROUS)]
    assert "'=1+1" in cells and "'=备注" in cells

    plain = tmp_path / "plain.csv"
    result = enrich_at(
        server,
        str(_formula_input(tmp_path)),
        "-o",
        str(plain),
        "--no-escape-formulas",
        key=KEY,
    )
    assert result.exit_code == 0, result.output
    with plain.open(encoding="utf-8-sig", newline="") as fh:
        assert "=1+1" in [cell for row in csv.reader(fh) for cell in row]


def _answer(days_ago: float, orderid: str) -> Answer:
    when = (datetime.now().astimezone() - timedelta(days=days_ago)).isoformat(timespec="seconds")
    return Answer(Status.OK, 0, "成功", orderid, "50", "50", "50", when)


def test_purge_removes_only_entries_older_than_the_age_given(tmp_path: Path, run: Run) -> None:
    path = tmp_path / "j" / "journal.sqlite3"
    old, recent = (
        Person("王伟", person(1)[1], "13800000001"),
        Person("李娜", person(2)[1], "13800000002"),
    )
    with Journal.open(path) as journal:
        journal.put(journal.key(old), _answer(120, "OLD"))
        journal.put(journal.key(recent), _answer(10, "NEW"))

    result = run("purge", "--older-than", "90d", "--state", str(path))

    assert result.exit_code == 0, result.output
    assert "purged 1 answer(s)" in result.output
    with Journal.open(path) as journal:
        assert journal.get(journal.key(old)) is None
        kept = journal.get(journal.key(recent))
        assert kept is not None and kept.orderid == "NEW"


def test_key_on_the_command_line_warns_and_never_echoes(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(key="other")
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src), "--key", KEY, "--endpoint", server.url, *fast())
    assert result.exit_code == 4
    assert "WARNING: --key is visible to other users" in result.stderr
    assert "10001" in result.output
    assert KEY not in result.output

    log = tmp_path / "run.log"
    quiet = run(
        "enrich",
        str(src),
        "--key",
        KEY,
        "--endpoint",
        server.url,
        "-q",
        "--log-file",
        str(log),
        *fast(),
    )
    assert "visible to other users" not in quiet.stderr, "-q: errors only (cron mail)"
    assert "visible to other users" in log.read_text(encoding="utf-8"), "the log keeps it"


def test_insecure_warns_loudly(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src), "--sandbox", "--insecure", "-o", str(tmp_path / "o.csv"))
    assert result.exit_code == 0, result.output
    assert "TLS certificates are NOT verified" in result.stderr


def test_log_filter_scrubs_what_slips_through() -> None:
    import logging

    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "id %s tel %s key %s",
        ("11010119900307803X", "13812345678", KEY),
        None,
    )
    PiiFilter((KEY,)).filter(record)
    assert record.getMessage() == "id 110***********803X tel 138****5678 key ***"
    assert scrub("身份证110101199003078") == "身份证110********3078"


def test_a_one_letter_key_leaves_the_warning_readable_and_is_masked_as_a_value(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(key="other")
    src = write_csv(tmp_path / "in.csv", [list(person(1))])

    result = run("enrich", str(src), "--key", "k", "--endpoint", server.url, *fast())

    assert result.exit_code == 4
    warning = [line for line in result.stderr.splitlines() if "visible" in line]
    assert warning == [
        "WARNING: --key is visible to other users (ps, shell history); "
        "prefer the JUHE_API_KEY environment variable or the config file"
    ]

    # The same key where it is a value: the name of a folder in an error message.
    (tmp_path / "k").mkdir()
    out = tmp_path / "k" / "missing" / "out.csv"
    failed = run("enrich", str(src), "--key", "k", "--sandbox", "-o", str(out))
    assert failed.exit_code == 1
    assert f"{tmp_path}/***/missing/out.csv" in failed.stderr
    assert "/k/" not in failed.stderr
