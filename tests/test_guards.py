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


async def test_a_possibly_billed_attempt_holds_its_budget() -> None:
    # A reply lost after sending may have been billed: it keeps its unit of --max-billed, so
    # lost replies can never let the server bill more than the ceiling.
    control = RunControl(max_billed=3)
    for _ in range(2):
        await control.reserve()
        control.settle(billed=False, possibly=True)
    await control.reserve()
    control.settle(billed=True)

    with pytest.raises(NotSent, match="budget reached"):
        await control.reserve()
    assert (control.billed, control.possibly_billed, control.spent) == (1, 2, 3)
    assert control.stop_reason is not None and "2 possibly billed" in control.stop_reason


async def test_an_unbilled_reply_gives_its_budget_back() -> None:
    control = RunControl(max_billed=1)
    await control.reserve()
    control.settle(billed=False)
    await control.reserve()  # the unit came back: not refused
    assert not control.stopped


async def test_a_call_waits_for_a_lost_reply_in_flight_before_its_budget_is_known() -> None:
    control = RunControl(max_billed=1)
    await control.reserve()
    waiter = asyncio.create_task(control.reserve())
    await asyncio.sleep(0)
    assert not waiter.done(), "the one unit is held by the call in flight"
    control.settle(billed=False, possibly=True)
    with pytest.raises(NotSent, match="budget reached"):
        await asyncio.wait_for(waiter, 2)
