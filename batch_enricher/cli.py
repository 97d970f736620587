"""The command line: parse options, call one library function, turn its exceptions into exit codes.

No pandas, aiohttp or SQL here: see runner.py, checkfile.py, journal*.py and sandbox.py. Nor
is any of them imported before a command needs it: `--help`, `validate` and `codes` never load
aiohttp (most of a start-up's time), and tests/test_imports.py keeps it so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar

import click
from click.core import ParameterSource

from batch_enricher import __version__, bands
from batch_enricher.autorate import AUTO, DEFAULT_MAX_QPS
from batch_enricher.config import DEFAULT_ENDPOINT, ENV, load_config, parse_duration
from batch_enricher.errors import EnricherError, OutputError
from batch_enricher.privacy import PiiFilter, scrub
from batch_enricher.retry import RetryPolicy

if TYPE_CHECKING:
    from batch_enricher.runner import EnrichOptions
    from batch_enricher.store.url import TeamUrl

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("batch_enricher")


class _Failure(click.ClickException):
    """A library error shown as `Error: ...`, exit 1 (input, config or I/O)."""


class _AbortFailure(_Failure):
    """An account-level API error: exit 4."""

    exit_code = 4


# click reads `exit_code` from the class, so each exit code of the contract gets its own.
_FAILURES: dict[int, type[_Failure]] = {1: _Failure, 4: _AbortFailure}


def _fail(exc: EnricherError, secrets: tuple[str, ...] = ()) -> NoReturn:
    raise _FAILURES.get(exc.exit_code, _Failure)(_shown(str(exc), secrets)) from None


def _shown(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A message fit to print: personal data, keys and database passwords masked."""
    from batch_enricher.store.url import mask_urls

    return scrub(mask_urls(text), secrets)


class _StateType(click.ParamType[Any, Any]):
    """`--state`: a journal file, or a team database's `postgresql://` URL (never echoed)."""

    name = "path|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from batch_enricher.store.url import TeamUrl, parse_state

        if isinstance(value, Path | TeamUrl):
            return value
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if not text.strip():
            self.fail("is empty", param, ctx)
        parsed = parse_state(text)
        if isinstance(parsed, Path) and parsed.is_dir():
            self.fail(f"{text} is a folder; name the journal file in it", param, ctx)
        return parsed


def _load_config_option(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    """Eager --config: its settings become click's default_map (flag > env > config > default)."""
    if value is None:
        return
    try:
        settings, tables = load_config(value)
    except EnricherError as exc:
        _fail(exc)
    if "headers" in settings:
        settings["header_lang"] = settings.pop("headers")
    if "escape_formulas" in settings:
        escape = settings.pop("escape_formulas")
        if not isinstance(escape, bool):  # `not "no"` would quietly keep escaping on
            raise _Failure(f"{value}: escape_formulas must be true or false")
        settings["no_escape_formulas"] = not escape
    _check_settings(ctx, value, settings)
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    ctx.meta["band_tables"] = tables


class _Number(click.FloatRange):
    """A FloatRange that also refuses inf and nan (which pass its range checks unnoticed)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class _Qps(click.ParamType[float | str, Any]):
    """`--qps`: a rate (requests per second, at least 0.01) or `auto`."""

    name = "qps"
    _rate = _Number(min=0.01)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | str:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            return float(self._rate.convert(value, param, ctx))
        except click.BadParameter:
            self.fail(f"{value!r} is neither a number of at least 0.01 nor 'auto'.", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "N|auto"


_HTTP_SCHEMES: Final = ("http", "https")


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An http(s) URL with a host: anything else would fail every call as a "network error"."""
    try:
        parts = urllib.parse.urlsplit(value)
        usable = parts.scheme in _HTTP_SCHEMES and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        usable = False
    if not usable:
        # Not echoed: an endpoint may carry credentials.
        raise click.BadParameter("must be an http:// or https:// URL with a host name")
    return value


def _check_settings(ctx: click.Context, path: Path, settings: dict[str, Any]) -> None:
    """Check each config value as its flag would be, so a bad one is a config error (exit 1)
    naming the file, not a usage error about a flag the user never typed."""
    params = {param.name: param for param in ctx.command.params}
    for name, raw in settings.items():
        param = params.get(name)
        if param is None:
            continue
        try:
            converted = param.type_cast_value(ctx, raw)
            if param.callback is not None:
                param.callback(ctx, param, converted)
        except click.BadParameter as exc:
            setting = {"header_lang": "headers"}.get(name, name)
            raise _Failure(f"{path}: {setting}: {exc.message}") from None


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: The name of the stderr log handler, whose level says whether -v was given.
_CONSOLE: Final = "console"


def _verbose() -> bool:
    """Whether -v (or BATCH_ENRICHER_DEBUG) asked for debug output, tracebacks included."""
    if os.environ.get("BATCH_ENRICHER_DEBUG"):
        return True
    return any(h.get_name() == _CONSOLE and h.level <= logging.DEBUG for h in log.handlers)


def _setup_logging(
    verbose: bool, quiet: bool, log_file: Path | None, secrets: tuple[str, ...]
) -> None:
    """Console at WARNING (-v: DEBUG, -q: ERROR), an optional private log file at DEBUG."""
    root = logging.getLogger("batch_enricher")
    for old in list(root.handlers):  # an earlier invocation's (tests run several in one process)
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    pii = PiiFilter(secrets)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console.set_name(_CONSOLE)
    console.addFilter(pii)
    root.addHandler(console)
    if log_file is not None:
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)  # an existing log keeps its mode otherwise
        except OSError as exc:
            raise _Failure(f"cannot open the log file {log_file}: {exc.strerror or exc}") from None
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(pii)
        root.addHandler(handler)


def _check_written_paths(
    options: EnrichOptions, *, summary_json: Path | None, log_file: Path | None
) -> None:
    """Refuse, before anything is sent, a summary or log that could not be written or would
    overwrite an input, an output or the journal (the library checks its own files)."""
    from batch_enricher.runner import resolve_outputs

    taken = {p.resolve(): "an input" for p in options.inputs}
    taken.update({p.resolve(): "an output" for p in resolve_outputs(options)})
    if isinstance(options.state, Path):
        taken.setdefault(options.state.resolve(), "the journal")
    for flag, path in (("--summary-json", summary_json), ("--log-file", log_file)):
        if path is None:
            continue
        what = taken.get(path.resolve())
        if what is not None:
            raise OutputError(f"{flag} {path} is {what} of this run; choose another path")
        _check_folder(path, flag)
        taken[path.resolve()] = f"the {flag} file"


def _check_folder(path: Path, what: str) -> None:
    if not path.parent.is_dir():
        raise OutputError(f"cannot write the {what} {path}: folder does not exist: {path.parent}")


def _input_options(f: F) -> F:
    """Options every command that reads a spreadsheet shares."""
    for option in reversed(
        [
            click.option("--name-col", help="Header of the name column (default: found by alias)."),
            click.option("--idcard-col", help="Header of the ID number column."),
            click.option("--mobile-col", help="Header of the mobile column."),
            click.option("--sheet", help="Sheet of an .xlsx/.xls input, by name or 0-based index."),
            click.option("--encoding", help="Encoding of a CSV input (default: detected)."),
            click.option(
                "--header-row",
                type=click.IntRange(min=1),
                help="Row number of the header (default: the first of the first 20 rows that "
                "holds the name, ID and mobile columns).",
            ),
        ]
    ):
        f = option(f)
    return f


def _sheet(value: str | None) -> str | int | None:
    # Passed on as text: a sheet named "2014" is that sheet; digits that name no sheet are an
    # index (the reader decides, knowing the sheets).
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batch-enricher")
def cli() -> None:
    """Enrich customer spreadsheets with Juhe's 经济能力评级（社保）查询 API.

    Pays once per person, keeps every paid answer in a journal, and writes your file back
    with the decoded scores appended.

    \b
    Try it without a key, against the built-in emulator:
        batch-enricher enrich sample_data/customers.csv --sandbox -o out.xlsx
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Output .csv/.tsv/.xlsx (one input)."
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the outputs of several inputs.",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config_option,
    help="TOML settings file (see config.example.toml).",
)
@click.option(
    "--key",
    envvar=ENV["key"],
    help="API key (prefer the JUHE_API_KEY environment variable: flags show in `ps`).",
)
@click.option(
    "--endpoint",
    envvar=ENV["endpoint"],
    default=DEFAULT_ENDPOINT,
    show_default=True,
    callback=_endpoint,
    help="API endpoint URL.",
)
@click.option(
    "--qps",
    envvar=ENV["qps"],
    type=_Qps(),
    default=10.0,
    show_default=True,
    help="Requests per second, never exceeded in any one-second window. 'auto' finds the "
    "account's limit (from 10011 replies) and settles just under it; the summary says what "
    "it found. With a team --state, for all the account's runs together.",
)
@click.option(
    "--max-qps",
    envvar=ENV["max_qps"],
    type=_Number(min=0.01),
    default=DEFAULT_MAX_QPS,
    show_default=True,
    help="The most requests per second --qps auto ever tries.",
)
@click.option(
    "--concurrency",
    envvar=ENV["concurrency"],
    type=click.IntRange(min=1, max=256),
    default=8,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--timeout",
    envvar=ENV["timeout"],
    type=_Number(min=0.1),
    default=15.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option(
    "--max-retries",
    envvar=ENV["max_retries"],
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Retries of a transient failure.",
)
@click.option(
    "--uncertain-retries",
    envvar=ENV["uncertain_retries"],
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Of those retries, how many may follow a reply lost after sending (timeout, dropped "
    "connection, unreadable reply). Such an attempt may have been billed: it counts against "
    "--max-billed, and its retry waits at least 10x --retry-initial.",
)
@click.option(
    "--retry-initial",
    type=_Number(min=0.0),
    default=0.5,
    show_default=True,
    help="First retry pause in seconds (doubles, with jitter).",
)
@click.option(
    "--retry-max",
    type=_Number(min=0.0),
    default=30.0,
    show_default=True,
    help="Longest retry pause in seconds.",
)
@click.option(
    "--state",
    envvar=ENV["state"],
    type=_StateType(),
    help="Journal: a file (default: under the user's state folder), or a team's "
    "postgresql://user@host/db URL shared by every run that names it (see README, Team).",
)
@click.option(
    "--secret-file",
    envvar=ENV["secret_file"],
    type=click.Path(path_type=Path, dir_okay=False),
    help="With a postgresql:// --state: the team's secret (every member needs a copy; the "
    "first run on a new database creates it). Default: team.secret in the state folder.",
)
@click.option(
    "--team-lease",
    envvar="BATCH_ENRICHER_TEAM_LEASE",
    type=_Number(min=0.5, max=3600.0),
    default=30.0,
    hidden=True,  # tests shorten it; the default is what a team wants
    help="Seconds after a team run's last heartbeat that its claims are free again.",
)
@click.option(
    "--new-journal",
    is_flag=True,
    help="Set the journal and its secret aside (renamed, never deleted) and start an empty "
    "one: everyone is paid for again. For a journal refused as missing, emptied or replaced.",
)
@click.option(
    "--max-age",
    envvar=ENV["max_age"],
    default="30d",
    show_default=True,
    callback=_duration,
    help="Reuse journal answers younger than this (30d, 12h, 0 = ask again).",
)
@click.option(
    "--max-billed",
    envvar=ENV["max_billed"],
    type=click.IntRange(min=0),
    help="Stop sending once this many calls are billed in this run (a call whose reply was "
    "lost after sending counts: it may have been billed).",
)
@click.option("--sandbox", is_flag=True, help="Use the built-in API emulator: no key, no network.")
@click.option("--dry-run", is_flag=True, help="Read, validate and plan; send nothing.")
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the run summary as JSON.",
)
@click.option(
    "--headers",
    "header_lang",
    envvar=ENV["headers"],
    type=click.Choice(["en", "zh"]),
    default="en",
    show_default=True,
    help="Language of the appended column headers.",
)
@click.option(
    "--no-escape-formulas",
    is_flag=True,
    help="Do not prefix formula-like CSV cells with ' (for non-spreadsheet consumers).",
)
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (dangerous).")
@click.option(
    "--lock-timeout",
    type=_Number(min=0.0),
    default=5.0,
    show_default=True,
    help="Seconds to wait for another run's journal lock.",
)
@_input_options
@click.option("-v", "--verbose", is_flag=True, help="Debug messages (masked) on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append a debug log (masked) to this file.",
)
@click.pass_context
def enrich(
    ctx: click.Context,
    inputs: tuple[str, ...],
    output: Path | None,
    output_dir: Path | None,
    key: str | None,
    endpoint: str,
    qps: float | Literal["auto"],
    max_qps: float,
    concurrency: int,
    timeout: float,
    max_retries: int,
    uncertain_retries: int,
    retry_initial: float,
    retry_max: float,
    state: Path | TeamUrl | None,
    secret_file: Path | None,
    team_lease: float,
    new_journal: bool,
    max_age: float | None,
    max_billed: int | None,
    sandbox: bool,
    dry_run: bool,
    summary_json: Path | None,
    header_lang: str,
    no_escape_formulas: bool,
    insecure: bool,
    lock_timeout: float,
    name_col: str | None,
    idcard_col: str | None,
    mobile_col: str | None,
    sheet: str | None,
    encoding: str | None,
    header_row: int | None,
    verbose: bool,
    quiet: bool,
    log_file: Path | None,
) -> None:
    """Enrich INPUT files (.csv, .tsv, .xlsx, .xls; folders and globs too).

    Each distinct person is sent once; answers go to the journal as they arrive, so a
    rerun of the same command continues where a stopped run left off and pays nobody twice.

    \b
    Examples:
        batch-enricher enrich customers.xlsx --sandbox -o out.xlsx
        JUHE_API_KEY=... batch-enricher enrich export.csv --qps 20 --summary-json run.json
        batch-enricher enrich a.csv b.xlsx --output-dir enriched/ --headers zh

    \b
    Exit codes: 0 every row final · 1 input/config/IO error · 2 usage error
                3 some rows failed or skipped (rerun to continue) · 4 aborted by an account error
    """
    from batch_enricher.progress import make_progress
    from batch_enricher.report import format_summary, write_json
    from batch_enricher.runner import EnrichOptions, expand_inputs
    from batch_enricher.runner import enrich as run_enrich

    secrets = (key,) if key else ()
    if sandbox:
        key = "sandbox"  # the emulator's; the CLI starts it below and hands the run its URL
    if output is not None and output_dir is not None:
        raise click.UsageError("use either -o/--output or --output-dir, not both")
    try:
        paths = expand_inputs(inputs)
        options = EnrichOptions(
            inputs=paths,
            output=output,
            output_dir=output_dir,
            key=key,
            endpoint=endpoint,
            qps=qps,
            max_qps=max_qps,
            concurrency=concurrency,
            timeout=timeout,
            retry=RetryPolicy(
                max_retries=max_retries,
                initial=retry_initial,
                maximum=retry_max,
                uncertain_retries=uncertain_retries,
            ),
            state=state,
            secret_file=secret_file,
            team_lease=team_lease,
            max_age=max_age,
            max_billed=max_billed,
            dry_run=dry_run,
            headers=header_lang,
            escape_formulas=not no_escape_formulas,
            insecure=insecure,
            name_col=name_col,
            idcard_col=idcard_col,
            mobile_col=mobile_col,
            sheet=_sheet(sheet),
            encoding=encoding,
            header_row=header_row,
            lock_timeout=lock_timeout,
            new_journal=new_journal,
            band_tables=ctx.meta.get("band_tables", dict(bands.DEFAULT_TABLES)),
        )
        _check_written_paths(options, summary_json=summary_json, log_file=log_file)
    except EnricherError as exc:
        _fail(exc, secrets)
    _setup_logging(verbose, quiet, log_file, secrets)
    if key and ctx.get_parameter_source("key") is ParameterSource.COMMANDLINE:
        # A warning, not an error: -q keeps it out of cron mail, --log-file still records it.
        log.warning(
            "--key is visible to other users (ps, shell history); "
            "prefer the %s environment variable or the config file",
            ENV["key"],
        )
    if insecure:
        click.echo(
            "WARNING: --insecure: TLS certificates are NOT verified; "
            "anyone on the network path can read the personal data sent",
            err=True,
        )
    try:
        progress = make_progress(quiet=quiet)
        try:
            with _sandbox_for(options, sandbox and not dry_run):
                summary = run_enrich(options, progress)
        finally:
            progress.close()  # an error message must not land on the bar's line
    except EnricherError as exc:
        _fail(exc, secrets)
    if not quiet or summary.exit_code:
        click.echo(format_summary(summary), err=True)
    if summary_json is not None:
        try:
            write_json(summary, summary_json)
        except EnricherError as exc:
            _fail(exc, secrets)
    ctx.exit(summary.exit_code)


@contextlib.contextmanager
def _sandbox_for(options: EnrichOptions, wanted: bool) -> Iterator[None]:
    """With --sandbox: serve the emulator on loopback and point the run at it."""
    if not wanted:
        yield
        return
    from batch_enricher.sandbox import SandboxConfig, running

    with running(SandboxConfig()) as emulator:
        options.endpoint = emulator.url
        yield


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a report (.csv/.xlsx): your rows with status and reason.",
)
@_input_options
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the counts as JSON.",
)
@click.pass_context
def validate(
    ctx: click.Context,
    input_path: Path,
    report: Path | None,
    name_col: str | None,
    idcard_col: str | None,
    mobile_col: str | None,
    sheet: str | None,
    encoding: str | None,
    header_row: int | None,
    summary_json: Path | None,
) -> None:
    """Check INPUT locally: no network, nothing sent, nothing billed.

    Prints how many rows have each problem; exits 0 when every row is valid, 3 when not.

    \b
    Example:
        batch-enricher validate customers.xlsx -o problems.xlsx
    """
    from batch_enricher.checkfile import format_validation, validate_file
    from batch_enricher.report import write_json_doc

    try:
        if summary_json is not None:
            if summary_json.resolve() in {input_path.resolve(), (report or input_path).resolve()}:
                raise OutputError(
                    f"--summary-json {summary_json} is the input or the report; choose another path"
                )
            _check_folder(summary_json, "--summary-json")
        result = validate_file(
            input_path,
            report=report,
            name_col=name_col,
            idcard_col=idcard_col,
            mobile_col=mobile_col,
            sheet=_sheet(sheet),
            encoding=encoding,
            header_row=header_row,
        )
    except EnricherError as exc:
        _fail(exc)
    click.echo(format_validation(result))
    if summary_json is not None:
        try:
            write_json_doc(result.to_json(), summary_json)
        except EnricherError as exc:
            _fail(exc)
    ctx.exit(0 if result.invalid == 0 else 3)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless you mean it).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--qps-limit",
    type=_Number(min=0.01),
    help="Answer 10011 past this many requests per second.",
)
@click.option(
    "--quota", type=click.IntRange(min=0), help="Answer 10012 after this many billed answers."
)
@click.option(
    "--fault-rate",
    type=_Number(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of requests that get a transient fault.",
)
@click.option("--latency-ms", type=_Number(min=0.0), default=0.0, show_default=True)
@click.option(
    "--drop-rate",
    type=_Number(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of requests answered (and billed, if answers) whose connection is then "
    "closed without a reply.",
)
@click.option(
    "--late-rate",
    type=_Number(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of requests answered (and billed, if answers) whose reply is held back --late-ms.",
)
@click.option(
    "--late-ms",
    type=_Number(min=0.0),
    default=60_000.0,
    show_default=True,
    help="How long a late reply is held back (set it past the client's --timeout).",
)
@click.option(
    "--truncate-rate",
    type=_Number(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of requests answered (and billed, if answers) whose reply body is cut short.",
)
@click.option("--key", help="Accept only this key (10001 otherwise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the fault draws.")
def sandbox(
    host: str,
    port: int,
    qps_limit: float | None,
    quota: int | None,
    fault_rate: float,
    latency_ms: float,
    drop_rate: float,
    late_rate: float,
    late_ms: float,
    truncate_rate: float,
    key: str | None,
    seed: int,
) -> None:
    """Serve the API emulator (financeInfo/query) for demos and tests.

    The drop, late and truncate rates lose replies after billing them: what a client sees
    as a timeout, a dropped connection or an unreadable reply, and must count as possibly
    billed (/_stats shows what was really billed).

    \b
    Example:
        batch-enricher sandbox --port 8765 --qps-limit 25 --fault-rate 0.1 &
        batch-enricher enrich customers.csv --key x \
            --endpoint http://127.0.0.1:8765/financeInfo/query
    """
    from batch_enricher.sandbox import SandboxConfig, serve

    try:
        config = SandboxConfig(
            key=key,
            qps_limit=qps_limit,
            quota=quota,
            fault_rate=fault_rate,
            latency_ms=latency_ms,
            seed=seed,
            drop_rate=drop_rate,
            late_rate=late_rate,
            late_ms=late_ms,
            truncate_rate=truncate_rate,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(config, host=host, port=port)
    except OSError as exc:  # binding: a port in use, an address not on this machine, ...
        if exc.errno == errno.EADDRINUSE:
            raise _Failure(
                f"port {port} on {host} is already in use; choose another with --port "
                "(0 picks a free one)"
            ) from None
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise _Failure(f"cannot listen on {host} port {port}: {reason or exc}") from None


@cli.command(name="codes")
def codes_command() -> None:
    """Show the API's error codes, what the tool does with each, and the score band tables.

    \b
    Example:
        batch-enricher codes
    """
    from batch_enricher.report import format_codes

    click.echo(format_codes())


def _state_option(f: F) -> F:
    """--state, as `enrich` takes it: a journal file or a team database's URL."""
    return click.option(
        "--state",
        envvar=ENV["state"],
        type=_StateType(),
        help="Journal: a file (default: under the user's state folder) or a postgresql:// URL.",
    )(f)


def _secret_option(f: F) -> F:
    """--secret-file, as `enrich` takes it."""
    return click.option(
        "--secret-file",
        envvar=ENV["secret_file"],
        type=click.Path(path_type=Path, dir_okay=False),
        help="A team database's secret (default: team.secret in the state folder).",
    )(f)


def _local_only(state: Path | TeamUrl | None, command: str) -> Path:
    """The journal file for a command that works on SQLite journals only."""
    from batch_enricher.journal import default_state_path
    from batch_enricher.store.url import TeamUrl

    if isinstance(state, TeamUrl):
        raise _Failure(
            f"journal {command} works on a local SQLite journal only; a team database is "
            "checked and repaired with PostgreSQL's own tools (see `batch-enricher journal "
            "status` for what it holds)"
        )
    return state or default_state_path()


@cli.command()
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Delete answers older than this (e.g. 90d).",
)
@_state_option
def purge(older_than: float, state: Path | TeamUrl | None) -> None:
    """Delete journal answers older than --older-than (retention), locally or in a team database.

    \b
    Examples:
        batch-enricher purge --older-than 90d
        batch-enricher purge --older-than 90d --state postgresql://batch@db/enricher
    """
    from batch_enricher.journal import default_state_path
    from batch_enricher.store.admin import purge as purge_store

    where = state or default_state_path()
    if isinstance(where, Path) and not where.exists():
        click.echo(f"no journal at {where}; nothing to purge")
        return
    try:
        removed, left = purge_store(where, time.time() - older_than)
    except EnricherError as exc:
        _fail(exc)
    click.echo(f"purged {removed} answer(s) older than the cutoff; {left} kept in {where}")


@cli.group(name="journal")
def journal_group() -> None:
    """Look after the journal of paid answers: status, copy, check, recover.

    \b
    Examples:
        batch-enricher journal status --state postgresql://batch@db/enricher
        batch-enricher journal copy ~/.local/state/batch-enricher/journal.sqlite3 \\
            postgresql://batch@db/enricher --secret-file ~/team.secret
        batch-enricher journal check
        batch-enricher journal recover --state ~/jobs/journal.sqlite3
    """


@journal_group.command(name="status")
@_state_option
@_secret_option
def journal_status(state: Path | TeamUrl | None, secret_file: Path | None) -> None:
    """What the journal holds; for a team database, its live runs, rate and breakers.

    \b
    Example:
        batch-enricher journal status --state postgresql://batch@db/enricher
    """
    from batch_enricher.journal import default_state_path
    from batch_enricher.store.admin import journal_status as status_of

    try:
        status = status_of(state or default_state_path(), secret_file=secret_file)
    except EnricherError as exc:
        _fail(exc)
    click.echo("\n".join(status.lines()))


@journal_group.command(name="copy")
@click.argument("source", type=_StateType())
@click.argument("dest", type=_StateType())
@_secret_option
def journal_copy(source: Path | TeamUrl, dest: Path | TeamUrl, secret_file: Path | None) -> None:
    """Copy every answer from SOURCE into DEST: a local journal into a team database, or back.

    Keys are keyed hashes, so both must use one secret: a new team database is bound to the
    local journal's (its secret file is created from it), an existing one must already be.
    Where both hold an answer for a person, the newer is kept. Nothing is deleted.

    \b
    Example:
        batch-enricher journal copy ~/.local/state/batch-enricher/journal.sqlite3 \\
            postgresql://batch@db/enricher --secret-file ~/team.secret
    """
    from batch_enricher.store.admin import copy_journal

    try:
        report = copy_journal(source, dest, secret_file=secret_file)
    except EnricherError as exc:
        _fail(exc)
    click.echo(report.message())


@journal_group.command(name="check")
@_state_option
@click.pass_context
def journal_check(ctx: click.Context, state: Path | TeamUrl | None) -> None:
    """Check a local journal without changing it: integrity, answers, schema, secret.

    Exits 0 when a run can use it, 1 when not (the report says what to do next).

    \b
    Example:
        batch-enricher journal check --state ~/jobs/journal.sqlite3
    """
    from batch_enricher.journal_repair import check_journal

    try:
        report = check_journal(_local_only(state, "check"))
    except EnricherError as exc:
        _fail(exc)
    click.echo("\n".join(report.lines()))
    ctx.exit(0 if report.ok else 1)


@journal_group.command(name="recover")
@_state_option
@click.option(
    "--lock-timeout",
    type=_Number(min=0.0),
    default=5.0,
    show_default=True,
    help="Seconds to wait for another run's journal lock.",
)
def journal_recover(state: Path | TeamUrl | None, lock_timeout: float) -> None:
    """Copy every readable answer of a damaged local journal into a new one.

    The new journal takes the old one's place and keeps its secret, so no answer that could
    be read is paid for again; the damaged file is renamed beside it, never deleted.

    \b
    Example:
        batch-enricher journal recover --state ~/jobs/journal.sqlite3
    """
    from batch_enricher.journal_repair import recover_journal

    try:
        recovery = recover_journal(_local_only(state, "recover"), lock_timeout=lock_timeout)
    except EnricherError as exc:
        _fail(exc)
    click.echo(recovery.message())


#: Ctrl-C outside a run's own handler. `enrich` handles SIGINT itself from opening the journal
#: to writing the last output, so this one came before anything was sent or after all of it: no
#: request was in flight, and an output being written is removed, never left half-done.
_INTERRUPTED: Final = (
    "interrupted: no request was in flight; answers already received are kept in the journal "
    "and an unfinished output was not written; rerun the same command to continue"
)


def main() -> None:
    """Console-script entry point: no traceback ever reaches the user."""
    try:
        # Not standalone: click would answer Ctrl-C itself ("Aborted!", exit 1), saying
        # nothing of what was kept. Its other duties are done here as it does them.
        code = cli.main(prog_name="batch-enricher", standalone_mode=False)
    except SystemExit:
        raise
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo(_INTERRUPTED, err=True)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`| head`): exit quietly, and let the final flush go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:
        click.echo(f"Error: unexpected {type(exc).__name__}: {_shown(str(exc))}", err=True)
        # Not log.isEnabledFor: the logger is always at DEBUG (the --log-file wants everything).
        if _verbose():
            click.echo(_shown(traceback.format_exc()), err=True)
        click.echo("please report this (see SECURITY.md / README); rerunning is safe", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
