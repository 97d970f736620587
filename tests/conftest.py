"""Small fixtures shared by the CLI and end-to-end tests.

The API emulator runs on loopback in a background thread with its own event loop, so the CLI
under test (which calls `asyncio.run` itself) can be driven with click's CliRunner or as a
subprocess, exactly as a user runs it.
"""

from __future__ import annotations

import asyncio
import csv
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner, Result
from stdnum.cn.ric import calc_check_digit

from batch_enricher.cli import cli
from batch_enricher.sandbox import STATS, SandboxConfig, SandboxStats, make_app
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL on loopback)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟"]


def person(i: int) -> tuple[str, str, str]:
    """The i-th fictional person: (name, 18-digit ID with a correct check digit, mobile)."""
    region = ("110101", "310104", "440305", "510107", "330106")[i % 5]
    birth = f"{1960 + i % 40:04d}{1 + i % 12:02d}{1 + i % 28:02d}"
    body = f"{region}{birth}{i % 1000:03d}"
    idcard = body + calc_check_digit(body + "0")
    name = SURNAMES[i % len(SURNAMES)] + GIVEN[(i // len(SURNAMES)) % len(GIVEN)]
    mobile = "1" + str(3 + i % 7) + f"{i:09d}"
    return name, idcard, mobile


def write_csv(
    path: Path, rows: list[list[str]], header: tuple[str, ...] = ("姓名", "身份证号", "手机号")
) -> Path:
    """Write a UTF-8 CSV with a header row."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read an output CSV (UTF-8 with BOM) as dicts."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@dataclass
class Served:
    """An aiohttp app served on loopback from a background thread."""

    url: str
    app: web.Application
    loop: asyncio.AbstractEventLoop

    @property
    def stats(self) -> SandboxStats:
        return self.app[STATS]


@pytest.fixture
def serve_app() -> Iterator[Callable[..., Served]]:
    """Serve any aiohttp app on 127.0.0.1 in a thread; `path` is appended to the base URL."""
    stops: list[Callable[[], None]] = []

    def start(app: web.Application, path: str = "/financeInfo/query") -> Served:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, object] = {}

        async def boot() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            box["url"] = f"http://127.0.0.1:{port}{path}"
            box["runner"] = runner

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(boot())
            # Ready only once the loop is serving: a stop requested from then on lands in
            # run_forever, never in the tail of run_until_complete (which it would break).
            loop.call_soon(ready.set)
            loop.run_forever()
            runner = box["runner"]
            assert isinstance(runner, web.AppRunner)
            loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        assert ready.wait(10), "server did not start"

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

        stops.append(stop)
        return Served(str(box["url"]), app, loop)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def sandbox(serve_app: Callable[..., Served]) -> Callable[..., Served]:
    """Start the project's API emulator with the given SandboxConfig fields."""

    def start(**config: object) -> Served:
        return serve_app(make_app(SandboxConfig(**config)))  # type: ignore[arg-type]

    return start


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A journal path private to the test."""
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def run(state: Path) -> Callable[..., Result]:
    """Invoke the CLI in-process; `enrich` gets a private journal unless --state is given."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        argv = list(args)
        if argv and argv[0] == "enrich" and "--state" not in argv:
            argv += ["--state", str(state)]
        return CliRunner().invoke(cli, argv, env=env or {}, catch_exceptions=False)

    return invoke


@pytest.fixture
def enrich_at(run: Callable[..., Result]) -> Callable[..., Result]:
    """`enrich` against a test server, with quick retries: `enrich_at(server, "in.csv", ...)`."""

    def invoke(
        server: Served, *args: str, key: str = "k", env: dict[str, str] | None = None
    ) -> Result:
        return run("enrich", *args, "--key", key, "--endpoint", server.url, *fast(), env=env)

    return invoke


def fast(*extra: str) -> list[str]:
    """Flags that keep retries quick in tests (backoff in milliseconds, not seconds)."""
    return ["--retry-initial", "0.005", "--retry-max", "0.05", "--qps", "500", *extra]
