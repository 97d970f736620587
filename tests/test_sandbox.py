"""The API emulator, over real HTTP on loopback: replies, limits, faults and what it records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from stdnum.cn import ric

from batch_enricher import sandbox as sandbox_module
from batch_enricher.codes import REASONS
from batch_enricher.sandbox import (
    FAULT_CODES,
    HTTP_500,
    HTTP_502,
    STATS,
    LostReply,
    Sandbox,
    SandboxConfig,
    expected_answer,
    identity_hash,
    make_app,
    start,
)

Person = tuple[str, str, str]  # (realname, idcard, mobile)
Start = Callable[..., Awaitable[Sandbox]]

ORDERID_RE = re.compile(r"SANDBOX[0-9A-F]{16}")
FORM = "application/x-www-form-urlencoded"


def make_id(prefix17: str) -> str:
    """A valid 18-character ID number for 17 given digits."""
    return prefix17 + ric.calc_check_digit(prefix17 + "0")


def people(code: int, n: int) -> list[Person]:
    """n valid people the sandbox answers with `code` (0 or 281505)."""
    found: list[Person] = []
    for i in range(1000):
        person = (f"测试{chr(0x4E00 + i)}", make_id(f"11010119900307{i:03d}"[:17]), "13812345678")
        if expected_answer(*person)[0] == code:
            found.append(person)
            if len(found) == n:
                return found
    raise AssertionError("not enough people")


def form(person: Person, key: str = "k") -> dict[str, str]:
    realname, idcard, mobile = person
    return {"key": key, "realname": realname, "idcard": idcard, "mobile": mobile}


@pytest.fixture
async def launch() -> AsyncIterator[Start]:
    """Start sandboxes on ephemeral loopback ports; close them all afterwards."""
    running: list[Sandbox] = []

    async def _launch(**config: Any) -> Sandbox:
        box = await start(SandboxConfig(**config))
        running.append(box)
        return box

    yield _launch
    for box in running:
        await box.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, box: Sandbox, data: dict[str, str]) -> dict[str, Any]:
    async with http.post(box.url, data=data) as resp:
        assert resp.status == 200
        body: dict[str, Any] = json.loads(await resp.text())
        return body


async def test_valid_person_gets_scores_shaped_like_the_reference(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    (person,) = people(0, 1)
    async with http.post(box.url, data=form(person)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = json.loads(await resp.text())
    assert list(body) == ["reason", "result", "error_code"]
    assert body["reason"] == "成功" and body["error_code"] == 0
    result = body["result"]
    assert list(result) == ["orderid", "range", "history", "stability"]
    assert ORDERID_RE.fullmatch(result["orderid"])
    for name, floor in (("range", 10), ("history", 10), ("stability", 20)):
        assert isinstance(result[name], str)
        score = int(result[name])
        assert score == 0 or floor <= score <= 100
    assert box.stats.billed == 1


def test_answers_are_mostly_scores_with_about_five_percent_failures() -> None:
    answers = [
        expected_answer("张三", make_id(f"1101011990{i:07d}"), "13812345678") for i in range(4000)
    ]
    failed = sum(1 for code, _ in answers if code == 281505)
    assert 0.03 < failed / len(answers) < 0.08
    scores = [int(s[name]) for code, s in answers if code == 0 for name in s]
    assert sum(1 for s in scores if s == 0) / len(scores) < 0.15
    assert {s // 10 for s in scores if s} == set(range(1, 11))  # every band, up to 100


async def test_same_person_same_scores_across_instances_with_unique_orderids(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    (person,) = people(0, 1)
    first, second = await launch(), await launch()
    a = (await post(http, first, form(person)))["result"]
    b = (await post(http, first, form(person)))["result"]
    c = (await post(http, second, form(person)))["result"]
    scores = [(r["range"], r["history"], r["stability"]) for r in (a, b, c)]
    assert scores[0] == scores[1] == scores[2]
    assert len({a["orderid"], b["orderid"], c["orderid"]}) == 3
    assert first.stats.billed_by_identity[identity_hash(*person)] == 2


async def test_query_failed_person_is_not_billed(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    (person,) = people(281505, 1)
    body = await post(http, box, form(person))
    assert body == {"reason": "查询失败", "result": None, "error_code": 281505}
    assert box.stats.billed == 0 and not box.stats.billed_by_identity


GOOD_ID = make_id("11010119900307803")
BAD_FIELDS = [
    ("idcard", GOOD_ID[:-1] + ("0" if GOOD_ID[-1] != "0" else "1"), 281501),  # check digit
    ("idcard", GOOD_ID[:17], 281501),
    ("idcard", GOOD_ID[:16] + "A" + GOOD_ID[17], 281501),
    ("idcard", GOOD_ID[:17] + "x", 281501),  # the API wants upper-case X
    ("idcard", "", 281501),
    ("realname", "", 281502),
    ("realname", "张三3", 281502),
    ("realname", "张" * 51, 281502),
    ("mobile", "12812345678", 281503),
    ("mobile", "1381234567", 281503),
    ("mobile", "+8613812345678", 281503),
    ("mobile", "", 281503),
]


@pytest.mark.parametrize(("field", "value", "code"), BAD_FIELDS)
async def test_invalid_fields_are_rejected_with_their_code(
    launch: Start, http: aiohttp.ClientSession, field: str, value: str, code: int
) -> None:
    box = await launch()
    data = form(("张三", GOOD_ID, "13812345678"))
    data[field] = value
    body = await post(http, box, data)
    assert body == {"reason": REASONS[code], "result": None, "error_code": code}
    assert box.stats.billed == 0


async def test_a_fifty_character_name_with_a_middle_dot_is_accepted(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    body = await post(http, box, form(("阿" * 24 + "·" + "迪" * 25, GOOD_ID, "19912345678")))
    assert body["error_code"] in (0, 281505)


@pytest.mark.parametrize("key", ["", "wrong", None])
async def test_wrong_or_missing_key_is_10001(
    launch: Start, http: aiohttp.ClientSession, key: str | None
) -> None:
    box = await launch(key="secret")
    (person,) = people(0, 1)
    data = form(person)
    if key is None:
        del data["key"]
    else:
        data["key"] = key
    body = await post(http, box, data)
    assert body == {"reason": "错误的请求KEY", "result": None, "error_code": 10001}
    assert (await post(http, box, form(person, key="secret")))["error_code"] == 0


async def test_without_a_configured_key_any_nonempty_key_works_but_empty_does_not(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    (person,) = people(0, 1)
    assert (await post(http, box, form(person, key="anything")))["error_code"] == 0
    assert (await post(http, box, form(person, key="")))["error_code"] == 10001


async def test_quota_answers_10012_after_n_billed_and_bills_nothing_more(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch(quota=2)
    persons = people(0, 4)
    codes = [(await post(http, box, form(p)))["error_code"] for p in persons]
    assert codes == [0, 0, 10012, 10012]
    assert box.stats.billed == 2
    assert box.stats.first_time(10012) == 2


async def test_quota_holds_under_concurrency_with_latency(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch(quota=3, latency_ms=20)
    bodies = await asyncio.gather(*(post(http, box, form(p)) for p in people(0, 8)))
    assert sorted(b["error_code"] for b in bodies) == [0] * 3 + [10012] * 5
    assert box.stats.billed == 3


async def test_burst_beyond_qps_limit_gets_10011_unbilled(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch(qps_limit=3)
    bodies = await asyncio.gather(*(post(http, box, form(p)) for p in people(0, 10)))
    codes = sorted(b["error_code"] for b in bodies)
    assert codes == [0] * 3 + [10011] * 7
    assert box.stats.billed == 3
    assert box.stats.codes[10011] == 7
    assert box.stats.max_per_second() == 10


async def _fault_run(launch: Start, http: aiohttp.ClientSession, n: int) -> list[int]:
    """Send n valid requests one by one to a fault_rate=1.0 sandbox; return what each got."""
    box = await launch(fault_rate=1.0, seed=7)
    (person,) = people(0, 1)
    seen: list[int] = []
    for _ in range(n):
        async with http.post(box.url, data=form(person)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                assert resp.content_type == "text/html"
                assert b"<html>" in raw
                seen.append(-resp.status)
                continue
            assert resp.content_type == "application/json"
            body = json.loads(raw)
            assert body["result"] is None and body["reason"] == REASONS[body["error_code"]]
            seen.append(body["error_code"])
    assert box.stats.billed == 0
    assert [box.stats.answered[i] for i in range(n)] == seen
    return seen


async def test_full_fault_rate_gives_only_transient_faults_of_every_kind_deterministically(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    first = await _fault_run(launch, http, 40)
    assert set(first) == set(FAULT_CODES) == {281504, 10014, HTTP_500, HTTP_502}
    assert await _fault_run(launch, http, 40) == first


# --- replies lost after billing -------------------------------------------------------------


async def _lost_run(
    launch: Start, http: aiohttp.ClientSession, n: int, **config: Any
) -> tuple[Sandbox, list[str]]:
    """Send n answerable requests one by one; return the sandbox and what each client saw."""
    box = await launch(**config)
    seen: list[str] = []
    timeout = aiohttp.ClientTimeout(total=0.5)
    for person in people(0, n):
        try:
            async with http.post(box.url, data=form(person), timeout=timeout) as resp:
                raw = await resp.read()
            json.loads(raw)
            seen.append("ok")
        except aiohttp.ServerDisconnectedError:
            seen.append(LostReply.DROPPED)
        except TimeoutError:
            seen.append(LostReply.LATE)
        except ValueError:
            assert resp.status == 200
            seen.append(LostReply.TRUNCATED)
    return box, seen


async def test_lost_replies_are_billed_first_then_dropped_late_or_cut_short(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box, seen = await _lost_run(
        launch, http, 30, drop_rate=0.3, late_rate=0.2, late_ms=2000, truncate_rate=0.2
    )

    lost = [how for how in seen if how != "ok"]
    assert {*lost} == {LostReply.DROPPED, LostReply.LATE, LostReply.TRUNCATED}
    # Every one of them was an answer, and the server billed it although the client got none.
    assert box.stats.billed == 30
    assert box.stats.lost == {how: lost.count(how) for how in LostReply}
    assert box.stats.lost_billed == len(lost)
    assert box.stats.to_json()["lost_billed"] == len(lost)


async def test_lost_replies_are_drawn_deterministically_and_leave_the_faults_alone(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    _, first = await _lost_run(launch, http, 20, drop_rate=0.5, seed=4)
    _, again = await _lost_run(launch, http, 20, drop_rate=0.5, seed=4)
    assert first == again and {*first} == {"ok", LostReply.DROPPED}
    # The lost-reply draws have an RNG of their own: the fault sequence stays as it was.
    faults = await _fault_run(launch, http, 40)
    box = await launch(fault_rate=1.0, seed=7, drop_rate=0.5)
    (person,) = people(0, 1)
    for _ in range(40):
        with contextlib.suppress(aiohttp.ServerDisconnectedError):
            async with http.post(box.url, data=form(person)) as resp:
                await resp.read()
    assert [box.stats.answered[i] for i in range(40)] == faults


async def test_a_late_reply_is_given_up_when_the_sandbox_closes(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await start(SandboxConfig(late_rate=1.0, late_ms=60_000))
    (person,) = people(0, 1)
    task = asyncio.create_task(post(http, box, form(person)))
    for _ in range(200):
        if box.stats.lost:
            break
        await asyncio.sleep(0.005)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await box.close()
    assert loop.time() - started < 5, "closing waited for the held-back reply"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await task
    assert box.stats.billed == 1


@pytest.mark.parametrize(
    "config",
    [{"drop_rate": 0.6, "late_rate": 0.6}, {"truncate_rate": 1.5}, {"drop_rate": -0.1}],
)
def test_lost_reply_rates_must_be_shares_that_fit_in_one(config: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"between 0 and 1|more than 1"):
        SandboxConfig(**config)


async def test_key_is_checked_before_faults(launch: Start, http: aiohttp.ClientSession) -> None:
    box = await launch(key="secret", fault_rate=1.0)
    (person,) = people(0, 1)
    assert (await post(http, box, form(person, key="wrong")))["error_code"] == 10001


async def test_fail_codes_force_an_answer_for_one_idcard(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    forced, other = people(0, 2)
    unlucky = people(281505, 1)[0]
    box = await launch(fail_codes={forced[1]: 281504, unlucky[1]: 0})
    assert (await post(http, box, form(forced)))["error_code"] == 281504
    assert (await post(http, box, form(other)))["error_code"] == 0
    assert (await post(http, box, form(unlucky)))["error_code"] == 0
    assert box.stats.billed == 2


async def test_get_works_and_counts_personal_data_in_the_url(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    (person,) = people(0, 1)
    async with http.get(box.url, params=form(person)) as resp:
        assert json.loads(await resp.text())["error_code"] == 0
    await post(http, box, form(person))
    assert box.stats.query_params_seen == 1
    assert box.stats.methods == {"GET": 1, "POST": 1}
    assert box.stats.content_types == {"": 1, FORM: 1}


async def test_stats_record_what_was_sent(launch: Start, http: aiohttp.ClientSession) -> None:
    box = await launch()
    ok = people(0, 2)
    failed = people(281505, 1)
    sent = [ok[0], ok[1], ok[0], failed[0]]
    for person in sent:
        await post(http, box, form(person))
    stats = box.stats
    assert stats.requests == 4 and stats.billed == 3
    assert stats.received == sent
    assert stats.billed_by_identity == {identity_hash(*ok[0]): 2, identity_hash(*ok[1]): 1}
    assert stats.codes == {0: 3, 281505: 1}
    assert stats.methods == {"POST": 4} and stats.content_types == {FORM: 4}
    assert stats.query_params_seen == 0 and len(stats.arrivals) == 4
    assert stats.arrivals == sorted(stats.arrivals)


async def test_stats_endpoint_reports_counts_without_personal_data(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch()
    (person,) = people(0, 1)
    await post(http, box, form(person))
    await post(http, box, form(person))
    async with http.get(box.url.replace("/financeInfo/query", "/_stats")) as resp:
        raw = await resp.text()
    for value in person:
        assert value not in raw
    assert identity_hash(*person) not in raw
    stats = json.loads(raw)
    assert stats["requests"] == 2 and stats["billed"] == 2 and stats["billed_twice"] == 1
    assert stats["codes"] == {"0": 2} and stats["received"] == 2
    assert stats["query_params_seen"] == 0
    assert box.stats.requests == 2  # /_stats is not a query


async def test_latency_delays_the_reply_but_arrival_is_counted_at_once(
    launch: Start, http: aiohttp.ClientSession
) -> None:
    box = await launch(latency_ms=200)
    (person,) = people(0, 1)
    task = asyncio.create_task(post(http, box, form(person)))
    for _ in range(100):
        if box.stats.requests:
            break
        await asyncio.sleep(0.005)
    assert box.stats.requests == 1 and not task.done() and box.stats.billed == 0
    assert (await task)["error_code"] == 0


async def test_make_app_exposes_stats(http: aiohttp.ClientSession) -> None:
    from aiohttp.test_utils import TestServer

    app = make_app(SandboxConfig())
    async with TestServer(app, host="127.0.0.1") as server:
        (person,) = people(0, 1)
        async with http.post(server.make_url("/financeInfo/query"), data=form(person)) as resp:
            assert json.loads(await resp.text())["error_code"] == 0
    assert app[STATS].billed == 1


async def test_close_releases_the_port(http: aiohttp.ClientSession) -> None:
    box = await start(SandboxConfig())
    assert box.url.startswith("http://127.0.0.1:") and box.url.endswith("/financeInfo/query")
    (person,) = people(0, 1)
    await post(http, box, form(person))
    await box.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, box, form(person))


def test_serve_prints_url_and_stops_cleanly_on_ctrl_c() -> None:
    code = "from batch_enricher.sandbox import *; serve(SandboxConfig(), port=0)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started as a background job (`pytest &`) passes SIGINT on ignored: give the
        # child Ctrl-C as a terminal would.
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.search(r"http://127\.0\.0\.1:\d+/financeInfo/query", line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and "WARNING" not in err


def test_serve_warns_loudly_when_not_on_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def _no_server(*args: Any) -> None:
        """Bind nothing: only the warning is under test."""

    monkeypatch.setattr(sandbox_module, "_serve_until_stopped", _no_server)
    sandbox_module.serve(SandboxConfig(), host="0.0.0.0")
    assert "reachable from other machines" in capsys.readouterr().err
    sandbox_module.serve(SandboxConfig(), host="127.0.0.1")
    assert capsys.readouterr().err == ""


async def test_nothing_logged_names_a_person_even_for_a_get(
    launch: Start, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    box = await launch()
    (person,) = people(0, 1)
    async with http.get(box.url, params=form(person)) as resp:
        await resp.read()
    await post(http, box, form(person))
    for value in person:
        assert value not in caplog.text


def test_the_sandbox_command_passes_the_lost_reply_flags_and_checks_their_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from batch_enricher.cli import cli

    served: list[SandboxConfig] = []
    monkeypatch.setattr(sandbox_module, "serve", lambda config, **_: served.append(config))
    flags = ["--drop-rate", "0.1", "--late-rate", "0.2", "--late-ms", "900"]
    result = CliRunner().invoke(cli, ["sandbox", *flags, "--truncate-rate", "0.3"])
    assert result.exit_code == 0, result.output
    (config,) = served
    assert (config.drop_rate, config.late_rate, config.late_ms, config.truncate_rate) == (
        0.1,
        0.2,
        900.0,
        0.3,
    )

    result = CliRunner().invoke(cli, ["sandbox", "--drop-rate", "0.6", "--late-rate", "0.6"])
    assert result.exit_code == 2 and "add up to more than 1" in result.output
    assert len(served) == 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
