"""One request over real loopback HTTP: "certainly not sent" told from "sent, reply lost"."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batch_enricher.client import JuheClient, open_session
from batch_enricher.errors import ConnectFailedError, TransientApiError, UncertainReplyError
from batch_enricher.models import Person, Status

PERSON = Person("张三", "11010119900307803X", "13812345678")
ANSWER = {
    "reason": "成功",
    "result": {"orderid": "JH1", "range": "16", "history": "17", "stability": "38"},
    "error_code": 0,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve one handler on loopback; returns its URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/q", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/q"))

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_session() as http:
        yield http


async def _answer(request: web.Request) -> web.Response:
    await request.post()
    return web.json_response(ANSWER)


async def _drop(request: web.Request) -> web.Response:
    await request.post()  # the whole request arrived: the server may bill it now
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


async def _slow(request: web.Request) -> web.Response:
    await request.post()
    await asyncio.sleep(5)
    return web.json_response(ANSWER)


async def _unreadable(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(body=b'{"reason":"\xe6\x88', content_type="application/json")


def _status(code: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(status=code, text="<html>gateway</html>", content_type="text/html")

    return handler


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (_drop, "connection lost before the whole reply came (ServerDisconnectedError)"),
        (_slow, "no reply within --timeout 0.3 s"),
        (_unreadable, "unreadable reply"),
        (_status(504), "HTTP 504"),
    ],
)
async def test_a_reply_lost_after_sending_is_possibly_billed(
    serve: Serve, session: aiohttp.ClientSession, handler: Handler, message: str
) -> None:
    client = JuheClient(session, await serve(handler), "k", timeout=0.3)
    with pytest.raises(UncertainReplyError, match="it may have been billed") as caught:
        await client.request(PERSON)
    assert message in str(caught.value)


async def test_a_lost_reply_on_a_reused_connection_is_still_possibly_billed(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    # The marker travels with the request, not the connection: a pooled keep-alive connection
    # that already carried an answer says nothing about the next request's fate.
    calls = 0

    async def answer_then_hang(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return await (_answer if calls == 1 else _slow)(request)

    client = JuheClient(session, await serve(answer_then_hang), "k", timeout=0.3)
    assert (await client.request(PERSON)).status is Status.OK
    with pytest.raises(UncertainReplyError):
        await client.request(PERSON)


async def test_a_refused_connection_is_certainly_not_sent(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = JuheClient(session, f"http://127.0.0.1:{port}/q", "k", timeout=2)
    with pytest.raises(ConnectFailedError, match="connection error") as caught:
        await client.request(PERSON)
    assert not isinstance(caught.value, UncertainReplyError)


async def test_a_timeout_before_the_request_left_is_certainly_not_sent(serve: Serve) -> None:
    # One connection only, held by a slow request: the second times out waiting for it,
    # before a byte of it was written.
    arrived = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        arrived.set()
        return await _slow(request)

    connector = aiohttp.TCPConnector(limit=1)
    async with open_session(connector=connector) as http:
        url = await serve(hold)
        holder = asyncio.create_task(JuheClient(http, url, "k", timeout=30).request(PERSON))
        await asyncio.wait_for(arrived.wait(), 10)
        with pytest.raises(ConnectFailedError, match="timed out connecting"):
            await JuheClient(http, url, "k", timeout=0.3).request(PERSON)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_an_error_status_is_a_reply_not_a_lost_one(
    serve: Serve, session: aiohttp.ClientSession, code: int
) -> None:
    client = JuheClient(session, await serve(_status(code)), "k", timeout=2)
    with pytest.raises(TransientApiError, match=f"HTTP {code}") as caught:
        await client.request(PERSON)
    assert not isinstance(caught.value, UncertainReplyError | ConnectFailedError)


async def test_a_session_not_made_by_open_session_is_refused() -> None:
    # Without its marking requests every lost reply would look "never sent": refuse, don't guess.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ValueError, match="open_session"):
            JuheClient(http, "http://127.0.0.1:9/q", "k", timeout=1)
