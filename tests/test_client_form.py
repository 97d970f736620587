"""The form goes out encoded by hand (cheaper than aiohttp's form writer): the server must read
back exactly what was meant, whatever the characters, as application/x-www-form-urlencoded."""

from __future__ import annotations

from collections.abc import Callable

from batch_enricher.client import JuheClient, open_session
from batch_enricher.models import Person
from tests.conftest import Served, person

AWKWARD = ("张·三 &+=%李", "11010119900307803X", "13812345678")


async def test_the_server_reads_back_exactly_what_was_sent(
    sandbox: Callable[..., Served],
) -> None:
    key = "k&ey=1+2 3%"
    server = sandbox(key=key)  # a key read back wrong is refused (10001): request() raises
    people = [Person(*AWKWARD), Person(*person(1))]
    async with open_session() as session:
        client = JuheClient(session, server.url, key, timeout=10)
        for one in people:
            await client.request(one)
    stats = server.stats
    assert stats.received == [(p.realname, p.idcard, p.mobile) for p in people]
    assert stats.content_types == {"application/x-www-form-urlencoded": 2}
    assert stats.methods == {"POST": 2}
    assert stats.query_params_seen == 0
