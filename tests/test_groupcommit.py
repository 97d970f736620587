"""Group commit: answers arriving together share a transaction, and none is acknowledged (its
`put` returns) before it is committed; a failed commit is every waiter's error."""

from __future__ import annotations

import asyncio

import pytest

from batch_enricher.errors import JournalError
from batch_enricher.groupcommit import BATCH, GroupCommit
from batch_enricher.models import Answer, Status

ANSWER = Answer(Status.OK, 0, "成功", "SANDBOX1", "50", "60", "70", "2024-01-01T00:00:00+08:00")


class Store:
    """A `put_many` that records each transaction, or fails while `broken` is set."""

    def __init__(self) -> None:
        self.commits: list[list[bytes]] = []
        self.broken = False

    def put_many(self, items: list[tuple[bytes, Answer]]) -> None:
        if self.broken:
            raise JournalError("disk full")
        self.commits.append([key for key, _ in items])

    def committed(self) -> set[bytes]:
        return {key for commit in self.commits for key in commit}


def _key(i: int) -> bytes:
    return i.to_bytes(32, "big")


async def test_answers_arriving_together_share_one_commit_and_wait_for_it() -> None:
    store = Store()
    committer = GroupCommit(store.put_many, lambda: 10.0, linger=0.01)
    acknowledged: list[bytes] = []

    async def worker(i: int) -> None:
        await committer.put(_key(i), ANSWER)
        assert _key(i) in store.committed(), "acknowledged before it was committed"
        acknowledged.append(_key(i))

    await asyncio.gather(*(worker(i) for i in range(3)))
    assert store.commits == [[_key(0), _key(1), _key(2)]]
    assert committer.commits == 1
    assert len(acknowledged) == 3


async def test_no_waiting_when_nobody_is_left_to_send() -> None:
    store = Store()
    committer = GroupCommit(store.put_many, lambda: 0.0)
    for i in range(3):
        await committer.put(_key(i), ANSWER)
        assert store.commits[-1] == [_key(i)]  # committed at once, alone
    assert committer.commits == 3


async def test_a_full_batch_commits_at_once() -> None:
    store = Store()
    committer = GroupCommit(store.put_many, lambda: 3600.0, linger=3600.0)
    await asyncio.wait_for(
        asyncio.gather(*(committer.put(_key(i), ANSWER) for i in range(BATCH))), timeout=10
    )
    assert [len(commit) for commit in store.commits] == [BATCH]


async def test_a_shrinking_backlog_brings_the_commit_forward() -> None:
    store = Store()
    backlog = [3600.0]
    committer = GroupCommit(store.put_many, lambda: backlog[0], linger=3600.0)
    first = asyncio.create_task(committer.put(_key(1), ANSWER))
    await asyncio.sleep(0)
    backlog[0] = 0.001  # the pacer's queue is nearly dry: both go in a millisecond
    await asyncio.wait_for(committer.put(_key(2), ANSWER), timeout=5)
    await asyncio.wait_for(first, timeout=5)
    assert store.commits == [[_key(1), _key(2)]]


async def test_a_failed_commit_is_every_waiters_error_and_its_answers_are_kept() -> None:
    store = Store()
    store.broken = True
    committer = GroupCommit(store.put_many, lambda: 10.0, linger=0.01)
    results = await asyncio.gather(
        *(committer.put(_key(i), ANSWER) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, JournalError) for result in results)
    assert committer.failed == [ANSWER] * 3
    store.broken = False
    await committer.put(_key(9), ANSWER)  # and it goes on working
    assert store.commits == [[_key(9)]]


async def test_a_cancelled_worker_still_gets_its_answer_committed() -> None:
    store = Store()
    committer = GroupCommit(store.put_many, lambda: 3600.0, linger=3600.0)
    waiting = asyncio.create_task(committer.put(_key(1), ANSWER))
    await asyncio.sleep(0)
    assert store.commits == []
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert store.commits == [[_key(1)]], "a paid answer is never left behind"


async def test_flush_with_nothing_waiting_does_nothing() -> None:
    store = Store()
    committer = GroupCommit(store.put_many, lambda: 1.0)
    committer.flush()
    assert store.commits == []
    assert committer.commits == 0
