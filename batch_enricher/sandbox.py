"""An emulator of Juhe's financeInfo/query API, for demos, tests and the benchmark.

It answers like the reference (`reference/juhe-financeInfo-api.txt`): the same route, the
same reply shape and reasons, the documented error codes. On top it can enforce a key, a
per-second request limit (10011; it may change on a schedule, as an account's does when another
system starts using its key), a billing quota (10012), inject transient faults (JSON
281504/10014, HTTP 500/502: error replies, never billed) and add latency. Answers are
deterministic per person (derived from a hash of idcard|realname|mobile), so reruns see the
same scores.

It can also lose replies *after* deciding them, and billing them if they are answers: drop
the connection without a reply, hold the reply back (past the client's timeout), or cut its
body short. The client cannot tell whether such a request was billed; the stats can.

`SandboxStats` records what the server saw, so tests can check that the client never pays
twice, never puts personal data in a URL and never exceeds its rate. Nothing here logs
personal data: the aiohttp access log (which would print GET query strings) is switched off.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aiohttp import web
from stdnum.cn import ric

from batch_enricher.codes import INVALID_IDCARD, INVALID_MOBILE, INVALID_NAME, reason_of

PATH: Final = "/financeInfo/query"
STATS_PATH: Final = "/_stats"

#: The fields that carry personal data; none of them belongs in a URL.
PII_FIELDS: Final = ("realname", "idcard", "mobile")

#: Stats keys for faults that never reach a JSON error_code.
HTTP_500: Final = -500
HTTP_502: Final = -502

#: The transient faults `fault_rate` picks from (uniformly), keyed by the code counted in stats.
#: All are replies the server did not bill; a reply cut short is a lost reply (`truncate_rate`).
FAULT_CODES: Final = (281504, 10014, HTTP_500, HTTP_502)


class LostReply(StrEnum):
    """How a decided (and maybe billed) reply is lost on its way back."""

    DROPPED = "dropped"  # the connection is closed without a reply
    LATE = "late"  # the reply is held back `late_ms`
    TRUNCATED = "truncated"  # a 200 whose body is cut short


#: Answer derivation: share of people the API cannot answer (281505), out of 256.
_FAILED_PER_256: Final = 13  # ≈ 5 %
#: Share of each score that is 0 (无法预测), out of 256: mostly non-zero.
_ZERO_PER_256: Final = 20  # ≈ 8 %
#: Lowest non-zero score per model (the reference's tables start there).
_SCORE_FLOOR: Final = {"range": 10, "history": 10, "stability": 20}

_ID_RE: Final = re.compile(r"[0-9]{17}[0-9X]")
_MOBILE_RE: Final = re.compile(r"1[3-9][0-9]{9}")
_MAX_NAME: Final = 50

_JSON_TYPE: Final = "application/json"
_HTML_500: Final = (
    "<html><head><title>500 Internal Server Error</title></head>"
    "<body><center><h1>500 Internal Server Error</h1></center><hr><center>nginx</center>"
    "</body></html>"
)
_HTML_502: Final = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
    "</body></html>"
)


@dataclass
class SandboxConfig:
    """How the emulator behaves; the defaults answer everything at once."""

    key: str | None = None  # when set, any other key → 10001; None accepts any non-empty key
    qps_limit: float | None = None  # arrivals in the trailing 1.0 s beyond this → 10011
    #: Later limits, for a limit that changes mid-run (another system starts using the key):
    #: (seconds after the first request, qps_limit from then on), in time order.
    qps_schedule: tuple[tuple[float, float | None], ...] = ()
    quota: int | None = None  # after this many billed answers, every request → 10012
    fault_rate: float = 0.0  # share of requests that get a transient fault
    latency_ms: float = 0.0  # delay before every reply
    seed: int = 0  # for the fault RNG: same seed, same faults in arrival order
    fail_codes: dict[str, int] = field(default_factory=dict)  # idcard → forced error_code
    # Replies lost after being decided and billed (shares of requests; at most 1 together),
    # drawn from their own RNG so they leave the `fault_rate` sequence as it was.
    drop_rate: float = 0.0  # the connection is closed without a reply
    late_rate: float = 0.0  # the reply is held back `late_ms` (meant to pass the client's timeout)
    late_ms: float = 60_000.0
    truncate_rate: float = 0.0  # a 200 whose body is cut short (not JSON)

    def __post_init__(self) -> None:
        rates = (self.fault_rate, self.drop_rate, self.late_rate, self.truncate_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("every rate is a share of requests, between 0 and 1")
        if self.drop_rate + self.late_rate + self.truncate_rate > 1.0:
            raise ValueError("drop, late and truncate rates add up to more than 1")
        times = [at for at, _ in self.qps_schedule]
        if any(at < 0 for at in times) or times != sorted(times):
            raise ValueError("qps_schedule times are seconds after the first request, in order")

    def limit_at(self, elapsed: float) -> float | None:
        """The limit in force `elapsed` seconds after the first request (None: no limit).

        >>> SandboxConfig(qps_limit=40, qps_schedule=((30.0, 20),)).limit_at(31.0)
        20
        """
        limit = self.qps_limit
        for at, later in self.qps_schedule:
            if elapsed < at:
                break
            limit = later
        return limit


@dataclass
class SandboxStats:
    """What the server saw on the query endpoint; tests and the benchmark assert on it."""

    requests: int = 0
    billed: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    content_types: Counter[str] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    billed_by_identity: Counter[str] = field(default_factory=Counter)
    received: list[tuple[str, str, str]] = field(default_factory=list)
    query_params_seen: int = 0
    #: The code each request was answered with, by arrival index (None while in flight).
    answered: list[int | None] = field(default_factory=list)
    #: Replies lost on purpose, by how (see `LostReply`), and how many of those were billed.
    lost: Counter[LostReply] = field(default_factory=Counter)
    lost_billed: int = 0

    def first_time(self, code: int) -> int | None:
        """Arrival index of the first request answered with `code`, or None."""
        for index, answered in enumerate(self.answered):
            if answered == code:
                return index
        return None

    def max_per_second(self) -> int:
        """The most arrivals seen within any 1.0 s window (the client's worst burst)."""
        best = 0
        for index, at in enumerate(self.arrivals):
            start = bisect.bisect_right(self.arrivals, at - 1.0)
            best = max(best, index + 1 - start)
        return best

    def to_json(self) -> dict[str, Any]:
        """The counters as JSON-ready data, without any personal data."""
        return {
            "requests": self.requests,
            "billed": self.billed,
            "codes": {str(code): n for code, n in sorted(self.codes.items())},
            "methods": dict(self.methods),
            "content_types": dict(self.content_types),
            "arrivals": len(self.arrivals),
            "max_per_second": self.max_per_second(),
            "identities_billed": len(self.billed_by_identity),
            "billed_twice": sum(1 for n in self.billed_by_identity.values() if n > 1),
            "received": len(self.received),
            "query_params_seen": self.query_params_seen,
            "lost": {how.value: n for how, n in sorted(self.lost.items())},
            "lost_billed": self.lost_billed,
        }


STATS: Final = web.AppKey("sandbox_stats", SandboxStats)


class _State:
    """Per-app mutable state that is not a statistic: config, RNG, orderid counter."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.lost_rng = random.Random(f"lost-reply:{config.seed}")
        self.closing = asyncio.Event()  # set on shutdown: held-back replies give up at once
        self.orders = 0
        self.first_arrival: float | None = None  # where qps_schedule's times count from
        # Random per instance so orderids differ across restarts; the counter keeps them
        # unique within one.
        self.instance = os.urandom(4).hex().upper()

    def next_orderid(self) -> str:
        self.orders += 1
        return f"SANDBOX{self.instance}{self.orders & 0xFFFFFFFF:08X}"

    def qps_limit(self, now: float) -> float | None:
        """The limit in force at `now` (monotonic), the first request's arrival counting as 0."""
        if self.first_arrival is None:
            self.first_arrival = now
        return self.config.limit_at(now - self.first_arrival)

    def draw_fault(self) -> int | None:
        # Drawn at arrival for every request so the fault sequence depends only on the seed
        # and the arrival order, not on which earlier requests were refused.
        if self.rng.random() < self.config.fault_rate:
            return self.rng.choice(FAULT_CODES)
        return None

    def draw_lost(self) -> LostReply | None:
        # Also drawn at arrival for every request, from an RNG of its own.
        config = self.config
        draw = self.lost_rng.random()
        for how, rate in (
            (LostReply.DROPPED, config.drop_rate),
            (LostReply.LATE, config.late_rate),
            (LostReply.TRUNCATED, config.truncate_rate),
        ):
            if draw < rate:
                return how
            draw -= rate
        return None


_STATE: Final = web.AppKey("sandbox_state", _State)


def _digest(realname: str, idcard: str, mobile: str) -> bytes:
    return hashlib.sha256(f"{idcard}|{realname}|{mobile}".encode()).digest()


def identity_hash(realname: str, idcard: str, mobile: str) -> str:
    """The key of `SandboxStats.billed_by_identity`: sha256 hex of "idcard|realname|mobile"."""
    return _digest(realname, idcard, mobile).hex()


def expected_answer(realname: str, idcard: str, mobile: str) -> tuple[int, dict[str, str]]:
    """The deterministic (error_code, scores) the sandbox gives a valid person.

    >>> code, scores = expected_answer("张三", "11010119900307803X", "13812345678")
    >>> code in (0, 281505)
    True
    """
    digest = _digest(realname, idcard, mobile)
    if digest[0] < _FAILED_PER_256:
        return 281505, {}
    return 0, _scores(digest)


def _scores(digest: bytes) -> dict[str, str]:
    scores: dict[str, str] = {}
    for index, (name, floor) in enumerate(_SCORE_FLOOR.items()):
        zero_byte, value_byte = digest[1 + 2 * index], digest[2 + 2 * index]
        span = 100 - floor + 1
        scores[name] = "0" if zero_byte < _ZERO_PER_256 else str(floor + value_byte % span)
    return scores


def _id_ok(idcard: str) -> bool:
    return bool(_ID_RE.fullmatch(idcard)) and ric.calc_check_digit(idcard) == idcard[-1]


def _name_ok(realname: str) -> bool:
    return 0 < len(realname) <= _MAX_NAME and not any(ch.isdigit() for ch in realname)


def _mobile_ok(mobile: str) -> bool:
    return bool(_MOBILE_RE.fullmatch(mobile))


#: Field checks in the API's order, each with the code it answers on failure.
_CHECKS: Final = (
    ("idcard", _id_ok, INVALID_IDCARD),
    ("realname", _name_ok, INVALID_NAME),
    ("mobile", _mobile_ok, INVALID_MOBILE),
)


def _json_reply(code: int, result: dict[str, str] | None = None) -> web.Response:
    body = {"reason": reason_of(code), "result": result, "error_code": code}
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), content_type=_JSON_TYPE, charset="utf-8"
    )


def _fault_reply(code: int) -> web.Response:
    if code == HTTP_500:
        return web.Response(status=500, text=_HTML_500, content_type="text/html")
    if code == HTTP_502:
        return web.Response(status=502, text=_HTML_502, content_type="text/html")
    return _json_reply(code)


async def _lose(request: web.Request, how: LostReply, reply: web.Response) -> web.Response:
    """Lose a decided reply on its way back, as `how` says."""
    if how is LostReply.TRUNCATED:
        body = reply.body
        assert isinstance(body, bytes)
        # Cut mid-stream: the client gets a 200 it cannot decode.
        return web.Response(body=body[: len(body) // 2], content_type=_JSON_TYPE, charset="utf-8")
    if how is LostReply.LATE:
        state = request.app[_STATE]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), state.config.late_ms / 1000)
        if not state.closing.is_set():
            return reply
    # Dropped (or late when the server shuts down): close without a byte of reply. aiohttp
    # then finds the transport closed and writes nothing.
    if request.transport is not None:
        request.transport.abort()
    return reply


async def _params(request: web.Request) -> dict[str, str]:
    # The real API reads both; the form body wins over the query string.
    params = {k: v for k, v in request.query.items()}
    if request.method == "POST":
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _decide(
    state: _State,
    stats: SandboxStats,
    params: Mapping[str, str],
    in_window: int,
    limit: float | None,
    fault: int | None,
) -> tuple[int, dict[str, str] | None]:
    """Pick the reply for one request: (code, result or None). Fault codes are negative."""
    config = state.config
    key = params.get("key", "")
    if not key or (config.key is not None and not hmac.compare_digest(key, config.key)):
        return 10001, None
    if config.quota is not None and stats.billed >= config.quota:
        return 10012, None
    if limit is not None and in_window > limit:
        return 10011, None
    if fault is not None:
        return fault, None
    for name, check, code in _CHECKS:
        if not check(params.get(name, "")):
            return code, None
    realname, idcard, mobile = (params.get(name, "") for name in PII_FIELDS)
    forced = config.fail_codes.get(idcard)
    if forced is not None and forced != 0:
        return forced, None
    code, scores = expected_answer(realname, idcard, mobile)
    if forced == 0:  # a test forcing success, even for a person the API cannot answer
        code, scores = 0, _scores(_digest(realname, idcard, mobile))
    if code != 0:
        return code, None
    return 0, {"orderid": state.next_orderid(), **scores}


async def _query(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    stats = request.app[STATS]
    now = time.monotonic()
    index = stats.requests
    stats.requests += 1
    stats.arrivals.append(now)
    stats.answered.append(None)
    stats.methods[request.method] += 1
    # The bare mime type, or "" when the client sent none (aiohttp would say octet-stream).
    has_type = "Content-Type" in request.headers
    stats.content_types[request.content_type if has_type else ""] += 1
    if any(request.query.get(name) for name in PII_FIELDS):
        stats.query_params_seen += 1
    # The window includes this arrival; arrivals only ever grow, so the list stays sorted.
    in_window = len(stats.arrivals) - bisect.bisect_right(stats.arrivals, now - 1.0)
    limit = state.qps_limit(now)
    fault = state.draw_fault()
    lost = state.draw_lost()
    params = await _params(request)
    realname, idcard, mobile = (params.get(name, "") for name in PII_FIELDS)
    stats.received.append((realname, idcard, mobile))

    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)

    # No await from here to the reply being built: quota and billing stay consistent.
    code, result = _decide(state, stats, params, in_window, limit, fault)
    stats.codes[code] += 1
    stats.answered[index] = code
    if code == 0:
        stats.billed += 1
        stats.billed_by_identity[identity_hash(realname, idcard, mobile)] += 1
    reply = _json_reply(0, result) if code == 0 else _fault_reply(code)
    if lost is None:
        return reply
    # Billed above, before the reply is lost: exactly the case the client cannot see.
    stats.lost[lost] += 1
    stats.lost_billed += code == 0
    return await _lose(request, lost, reply)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].to_json())


def make_app(config: SandboxConfig) -> web.Application:
    """The emulator as an aiohttp application; `app[STATS]` is what it saw."""
    app = web.Application()
    app[STATS] = SandboxStats()
    app[_STATE] = state = _State(config)

    async def closing(_app: web.Application) -> None:
        state.closing.set()

    app.on_shutdown.append(closing)
    app.router.add_route("GET", PATH, _query)
    app.router.add_route("POST", PATH, _query)
    app.router.add_get(STATS_PATH, _stats)
    return app


def _url(host: str, port: int, path: str = PATH) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


class Sandbox:
    """A running emulator: its endpoint `url`, its `stats`, and `close()`."""

    def __init__(self, runner: web.AppRunner, url: str, stats: SandboxStats) -> None:
        self._runner = runner
        self.url = url
        self.stats = stats

    async def close(self) -> None:
        """Stop listening and release the port."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> Sandbox:
    """Start the emulator on host:port (0 picks a free port); `await sandbox.close()` stops it."""
    app = make_app(config)
    # access_log=None: the access log prints request lines, and a GET carries PII in its URL.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return Sandbox(runner, _url(host, bound_port), app[STATS])


@contextlib.contextmanager
def running(config: SandboxConfig, host: str = "127.0.0.1") -> Iterator[Sandbox]:
    """Serve the emulator from a background thread (its own event loop) inside the block.

    What `enrich --sandbox` uses: the CLI starts the emulator and hands the run its endpoint,
    so the run itself never knows it is talking to an emulator.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: list[Sandbox | BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            box.append(loop.run_until_complete(start(config, host)))
        except BaseException as exc:  # handed to the caller below
            box.append(exc)
            ready.set()
            return
        loop.call_soon(ready.set)  # set once the loop serves: a stop then lands in run_forever
        loop.run_forever()
        sandbox = box[0]
        assert isinstance(sandbox, Sandbox)
        loop.run_until_complete(sandbox.close())
        loop.close()

    thread = threading.Thread(target=main, name="batch-enricher-sandbox", daemon=True)
    thread.start()
    ready.wait()
    if isinstance(box[0], BaseException):
        thread.join()
        raise box[0]
    try:
        yield box[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve_until_stopped(config: SandboxConfig, host: str, port: int) -> None:
    sandbox = await start(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        print(f"batch-enricher sandbox listening on {sandbox.url}", flush=True)
        print(f"stats: {sandbox.url.removesuffix(PATH)}{STATS_PATH}  (Ctrl-C stops)", flush=True)
        await stop.wait()
    finally:
        await sandbox.close()


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the emulator until Ctrl-C or SIGTERM (blocking); prints the endpoint URL."""
    if not _is_loopback(host):
        print(
            f"WARNING: the sandbox is bound to {host}: it is reachable from other machines.",
            file=sys.stderr,
            flush=True,
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_stopped(config, host, port))
    print("sandbox stopped", flush=True)
