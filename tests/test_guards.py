"""Run guards: callers waiting on the quota probe when the run stops."""

from __future__ import annotations

import asyncio

import pytest

from batch_enricher.guards import NotSent, RunControl


@pytest.mark.timeout(10, method="signal")
async def test_a_stop_while_the_quota_probe_runs_releases_the_waiters() -> None:
    # A 10012 made one task the probe; another waits for it. Then SIGTERM (or an account error)
    # stops the run while the probe is still backing off: the waiter must give up (skipped),
    # not spin on the released-but-still-probing state and hang the run at 100% CPU.
    control = RunControl()
    probing = asyncio.Event()

    async def probe() -> None:
        control.quota_hit()
        probing.set()
        await control.sleep(30)  # backing off between retries

    probe_task = asyncio.create_task(probe())
    await probing.wait()
    waiter = asyncio.create_task(control.admit())
    await asyncio.sleep(0)
    assert not waiter.done(), "others wait while the probe runs"

    control.stop("interrupted by SIGTERM")

    with pytest.raises(NotSent):
        await asyncio.wait_for(waiter, 2)
    # And a caller arriving after the stop is refused at once too.
    with pytest.raises(NotSent):
        await asyncio.wait_for(control.admit(), 2)
    await probe_task
