"""The sandbox's limit can change mid-run (`qps_schedule`), counted from the first request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from batch_enricher.sandbox import SandboxConfig, start
from tests.test_sandbox import form, people


def test_the_schedule_steps_from_the_first_request() -> None:
    config = SandboxConfig(qps_limit=40, qps_schedule=((30.0, 20), (60.0, None)))
    assert config.limit_at(0.0) == 40
    assert config.limit_at(29.99) == 40
    assert config.limit_at(30.0) == 20
    assert config.limit_at(59.0) == 20
    assert config.limit_at(61.0) is None  # no limit from then on
    assert SandboxConfig(qps_limit=5).limit_at(1e6) == 5


@pytest.mark.parametrize("schedule", [((-1.0, 5.0),), ((10.0, 5.0), (5.0, 3.0))])
def test_a_schedule_out_of_order_is_refused(schedule: tuple[tuple[float, float], ...]) -> None:
    with pytest.raises(ValueError, match="in order"):
        SandboxConfig(qps_schedule=schedule)


async def test_a_step_at_zero_applies_from_the_first_request() -> None:
    box = await start(SandboxConfig(qps_schedule=((0.0, 2.0),)))
    try:
        async with aiohttp.ClientSession() as http:

            async def post(data: dict[str, str]) -> Any:
                async with http.post(box.url, data=data) as reply:
                    return json.loads(await reply.text())["error_code"]

            codes = await asyncio.gather(*(post(form(p)) for p in people(0, 6)))
    finally:
        await box.close()
    assert sorted(codes) == [0, 0, 10011, 10011, 10011, 10011]
