"""claims.py with a scripted session: who is called, who waits, who is given up."""

from __future__ import annotations

from collections.abc import Sequence

from batch_enricher.claims import POLL_S, Claimer
from batch_enricher.models import Person, Status
from batch_enricher.store.base import Claimed, Limiter

PEOPLE = [(bytes([n]) * 32, Person("张三", f"id{n}", "13800000000"), 1) for n in range(6)]
K = [key for key, _, _ in PEOPLE]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


class Scripted:
    """Another run holds K[1] and K[2]; K[1]'s answer lands at t=1, K[2]'s never."""

    exclusive = False
    wait_for_others = 3.0

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.batches: list[list[bytes]] = []

    @property
    def pacer(self) -> Limiter:
        raise NotImplementedError

    async def claim(self, keys: Sequence[bytes]) -> Claimed:
        self.batches.append(list(keys))
        done = {K[1]: Status.OK} if self.clock.now >= 1.0 else {}
        held = {K[2]} | ({K[1]} if self.clock.now < 1.0 else set())
        return Claimed(
            mine=[k for k in keys if k not in held and k not in done],
            answered={k: s for k, s in done.items() if k in keys},
            held=[k for k in keys if k in held],
        )


async def test_people_held_elsewhere_wait_for_their_answer_or_are_given_up() -> None:
    clock = Clock()
    session = Scripted(clock)
    answered: list[bytes] = []
    given_up: list[bytes] = []
    claimer = Claimer(
        session,  # type: ignore[arg-type]
        iter(PEOPLE),
        batch=4,
        stopped=lambda: False,
        sleep=clock.sleep,
        on_answered=lambda key, rows, status: answered.append(key),
        on_given_up=lambda key, rows: given_up.append(key),
        clock=clock.time,
    )
    called = []
    while (item := await claimer.next()) is not None:
        called.append(item[0])
    assert called == [K[0], K[3], K[4], K[5]]  # claimed in batches of 4, in order
    assert answered == [K[1]]  # its answer landed elsewhere: used, not paid for again
    assert given_up == [K[2]]  # held past wait_for_others: the row is skipped
    assert clock.now >= session.wait_for_others
    assert session.batches[:2] == [K[:4], K[4:]]
    assert all(len(batch) <= 4 for batch in session.batches)
    assert clock.now <= session.wait_for_others + 2 * POLL_S


async def test_nothing_is_handed_out_once_stopped() -> None:
    clock = Clock()
    stopped = False
    claimer = Claimer(
        Scripted(clock),  # type: ignore[arg-type]
        iter(PEOPLE),
        batch=4,
        stopped=lambda: stopped,
        sleep=clock.sleep,
        on_answered=lambda *a: None,
        on_given_up=lambda *a: None,
        clock=clock.time,
    )
    assert await claimer.next() is not None
    stopped = True
    assert await claimer.next() is None
