"""Dispatch: call the API once for every person the plan left to call.

`concurrency` workers take people from the spill (read in chunks, in order of first appearance),
claimed first through the store's session (claims.py: with a shared store another run may be
asking about the same person right now), pace and guard each request with the session's
limiter (`--qps N`, or `--qps auto`: autorate.py), and record each final answer before going on
(answers arriving close together share one commit: groupcommit.py). Whom this run answered, and who
failed, goes back to the spill for the write pass.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Final

import aiohttp

from batch_enricher.claims import Claimer
from batch_enricher.client import USER_AGENT, Caller, CallStats, JuheClient, open_session
from batch_enricher.codes import reason_of
from batch_enricher.errors import AccountError, ConfigError, JournalError, TransientApiError
from batch_enricher.guards import NotSent, RunControl
from batch_enricher.models import Answer, Outcome, Status
from batch_enricher.plan import Plan
from batch_enricher.progress import Progress
from batch_enricher.spill import Spill
from batch_enricher.store.base import SessionSettings, Store
from batch_enricher.summary import RunSummary

if TYPE_CHECKING:
    from batch_enricher.runner import EnrichOptions

log = logging.getLogger("batch_enricher")


async def dispatch(
    options: EnrichOptions,
    plan: Plan,
    store: Store,
    spill: Spill,
    summary: RunSummary,
    control: RunControl,
    progress: Progress,
    cutoff: float | None = None,
) -> None:
    """Call the API for every planned person.

    Each final answer goes to the store and is marked answered in `spill`; a failure that
    outlived its retries is kept in `spill` as the person's outcome. `cutoff` (--max-age) says
    which answers another run stores meanwhile count as answered.
    """
    stats = CallStats()
    endpoint, key = options.endpoint, options.key
    if not key:
        raise ConfigError("no API key")  # enrich_async checks first; this keeps the types honest
    ssl_context: ssl.SSLContext | bool = True
    if options.insecure:
        ssl_context = False
    settings = SessionSettings(
        options.qps, options.concurrency, cutoff, api_key=key, max_qps=options.max_qps
    )
    started, cpu = time.monotonic(), time.process_time()
    commits = 0
    try:
        async with (
            store.session(settings, control, stats) as session,
            open_session(
                connector=aiohttp.TCPConnector(limit=options.concurrency, ssl=ssl_context),
                headers={"User-Agent": USER_AGENT},
            ) as http,
        ):
            client = JuheClient(http, endpoint, key, timeout=options.timeout)
            caller = Caller(client, session.pacer, control, options.retry, stats)

            def answered_elsewhere(key_: bytes, rows: int, status: Status) -> None:
                summary.reused += 1
                spill.answered(key_)
                progress.advance(rows, status, billed=False)

            def given_up(key_: bytes, rows: int) -> None:
                spill.failed(key_, Outcome(Status.SKIPPED, None, _HELD_ELSEWHERE))
                progress.advance(rows, Status.SKIPPED, billed=False)

            claimer = Claimer(
                session,
                spill.to_call(),
                batch=options.concurrency,
                stopped=lambda: control.stopped,
                sleep=control.sleep,
                on_answered=answered_elsewhere,
                on_given_up=given_up,
            )
            in_flight = 0
            unkept: list[Answer] = []  # answers received that the journal could not store
            # Workers storing an answer: not cancelled on an error, so each learns whether its
            # answer was kept (a commit that failed fails every answer it held, and a worker
            # cancelled first would never count its own among those lost).
            recording: set[asyncio.Task[None] | None] = set()

            async def worker() -> None:
                nonlocal in_flight
                while (item := await claimer.next()) is not None:
                    key_, person, rows = item
                    if control.stopped:
                        await session.release([key_])
                        return
                    in_flight += 1
                    try:
                        answer = await caller.call(person)
                    except (NotSent, AccountError):
                        await session.release([key_])
                        continue  # skipped: the loop ends at the next `stopped` check
                    except TransientApiError as exc:
                        spill.failed(key_, Outcome(Status.FAILED, exc.error_code, _failed(exc)))
                        progress.advance(rows, Status.FAILED, billed=False)
                        await session.release([key_])
                        continue
                    finally:
                        in_flight -= 1
                    me = asyncio.current_task()
                    recording.add(me)
                    try:
                        await session.record(key_, answer)
                    except JournalError:
                        unkept.append(answer)
                        raise
                    finally:
                        recording.discard(me)
                    spill.answered(key_)
                    progress.advance(rows, answer.status, billed=answer.status is Status.OK)

            count = max(1, min(options.concurrency, plan.calls))
            workers = [asyncio.create_task(worker()) for _ in range(count)]
            try:
                await asyncio.gather(*workers)
            except BaseException as exc:
                # One worker failed for real (the journal cannot be written, say): the others
                # must not go on sending answers that could no longer be kept.
                control.stop("stopped by an error")
                abandoned = in_flight
                for task in workers:
                    if task not in recording:
                        task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                if isinstance(exc, JournalError) and unkept:
                    raise _journal_failed(exc, unkept, abandoned) from exc
                raise
            finally:
                commits = session.commits
                summary.rate_found = session.found()
    finally:
        summary.api_calls += stats.api_calls
        summary.billed += stats.billed
        summary.retries += stats.retries
        summary.possibly_billed += stats.possibly_billed
        summary.rate_limited += stats.codes[10011]
        # The benchmark reads the CPU figure: the call phase's cost, start-up excluded.
        log.debug(
            "dispatch took %.1f s, %.3f s CPU, %d API calls, %d journal commits",
            time.monotonic() - started,
            time.process_time() - cpu,
            stats.api_calls,
            commits,
        )


#: The reason on a row whose person another run was asking about for longer than this run waited.
_HELD_ELSEWHERE: Final = (
    "not sent: being queried by another run that shares the journal; rerun to fill it in"
)


def _journal_failed(exc: JournalError, unkept: list[Answer], abandoned: int) -> JournalError:
    """The journal refused an answer: what that cost, and what to do before rerunning."""
    billed = sum(answer.status is Status.OK for answer in unkept)
    return JournalError(
        f"{exc}. Nothing more was sent and no output was written. Answers already in the "
        f"journal are kept; lost: {billed} billed answer(s) that arrived but could not be "
        f"stored, and up to {abandoned} request(s) in flight, abandoned (they may have been "
        "billed). Free disk space or fix the journal folder's permissions, then rerun the "
        "same command: it asks only for people whose answer is not in the journal"
    )


def _failed(exc: TransientApiError) -> str:
    text = str(exc)
    if exc.error_code is not None:
        text = f"{reason_of(exc.error_code)} ({exc.error_code})"
    return f"{text}; still failing after retries, rerun to try again"
