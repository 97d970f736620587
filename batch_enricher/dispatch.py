"""Dispatch: call the API once for every person the plan left to call.

`concurrency` workers take people from the spill (read in chunks, in order of first appearance),
pace and guard each request, and commit each final answer to the journal before going on (answers
arriving close together share one commit: groupcommit.py). Whom this run answered, and who
failed, goes back to the spill for the write pass.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

import aiohttp

from batch_enricher.autorate import AutoRate
from batch_enricher.client import USER_AGENT, Caller, CallStats, JuheClient, open_session
from batch_enricher.codes import reason_of
from batch_enricher.errors import AccountError, ConfigError, JournalError, TransientApiError
from batch_enricher.groupcommit import GroupCommit
from batch_enricher.guards import NotSent, RunControl
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Outcome, Status
from batch_enricher.pacer import Pacer
from batch_enricher.plan import Plan
from batch_enricher.progress import Progress
from batch_enricher.spill import Spill
from batch_enricher.summary import RunSummary

if TYPE_CHECKING:
    from batch_enricher.runner import EnrichOptions

log = logging.getLogger("batch_enricher")


async def dispatch(
    options: EnrichOptions,
    plan: Plan,
    journal: Journal,
    spill: Spill,
    summary: RunSummary,
    control: RunControl,
    progress: Progress,
) -> None:
    """Call the API for every planned person.

    Each final answer goes to the journal and is marked answered in `spill`; a failure that
    outlived its retries is kept in `spill` as the person's outcome.
    """
    stats = CallStats()
    endpoint, key = options.endpoint, options.key
    sandbox = None
    if options.sandbox:
        from batch_enricher.sandbox import SandboxConfig, start

        sandbox = await start(SandboxConfig())
        endpoint, key = sandbox.url, "sandbox"
    if not key:
        raise ConfigError("no API key")  # enrich_async checks first; this keeps the types honest
    ssl_context: ssl.SSLContext | bool = True
    if options.insecure:
        ssl_context = False
    connector = aiohttp.TCPConnector(limit=options.concurrency, ssl=ssl_context)
    pacer, controller = _pacer(options)
    committer = GroupCommit(journal.put_many, pacer.backlog)
    started, cpu = time.monotonic(), time.process_time()
    try:
        async with open_session(connector=connector, headers={"User-Agent": USER_AGENT}) as session:
            client = JuheClient(session, endpoint, key, timeout=options.timeout)
            caller = Caller(client, pacer, control, options.retry, stats)
            todo = spill.to_call()  # one iterator shared by the workers
            in_flight = 0

            async def worker() -> None:
                nonlocal in_flight
                for key_, person, rows in todo:
                    if control.stopped:
                        return
                    in_flight += 1
                    try:
                        answer = await caller.call(person)
                    except (NotSent, AccountError):
                        continue  # skipped: the loop ends at the next `stopped` check
                    except TransientApiError as exc:
                        spill.failed(key_, Outcome(Status.FAILED, exc.error_code, _failed(exc)))
                        progress.advance(rows, Status.FAILED, billed=False)
                        continue
                    finally:
                        in_flight -= 1
                    await committer.put(key_, answer)  # durable before anything else
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
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                committer.flush()  # what cancelled workers left, if anything
                if isinstance(exc, JournalError) and committer.failed:
                    raise _journal_failed(exc, committer.failed, abandoned) from exc
                raise
    finally:
        if sandbox is not None:
            await sandbox.close()
        summary.api_calls += stats.api_calls
        summary.billed += stats.billed
        summary.retries += stats.retries
        summary.possibly_billed += stats.possibly_billed
        summary.rate_limited += stats.codes[10011]
        if controller is not None:
            summary.rate_found = controller.found()
        # The benchmark reads the CPU figure: the call phase's cost, start-up excluded.
        log.debug(
            "dispatch took %.1f s, %.3f s CPU, %d API calls, %d journal commits",
            time.monotonic() - started,
            time.process_time() - cpu,
            stats.api_calls,
            committer.commits,
        )


def _pacer(options: EnrichOptions) -> tuple[Pacer, AutoRate | None]:
    """The run's pacer: at the fixed `--qps`, or following a controller (`--qps auto`)."""
    if isinstance(options.qps, str):
        controller = AutoRate(options.max_qps)
        return Pacer.following(controller), controller
    return Pacer(options.qps), None


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
