"""Opportunistic micro-batching: concurrent requests are checked and scored together.

Most of the cost of scoring a record is per *call* (pandas builds frames column by
column for the contract checks and for the feature pipeline), not per record. So the
service never scores one request at a time under load: requests wait in a queue while a
batch is being scored, and everything that queued up meanwhile becomes the next batch,
checked with one ``check_records`` call and scored with one vectorised call per outcome.
A lone request is scored at once (no waiting window), so batching costs nothing at low
load and grows with concurrency on its own. One batch runs at a time, in a worker
thread, so the event loop keeps accepting and parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's records waiting to be checked and scored."""

    rows: list[dict[str, Any]]
    procedure_ids: list[str]
    prior_errors: list[dict[str, Any]]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects jobs and runs ``process(jobs) -> list[result]`` on whole batches.

    ``max_records`` caps a batch (a job is never split). ``process`` runs in a thread
    and must return one result per job, in order; an exception fails every job of the
    batch with that exception.
    """

    def __init__(self, process: Callable[[list[Job]], list[Any]], max_records: int = 2000):
        self.process = process
        self.max_records = max_records
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.jobs = 0

    async def submit(self, rows: list[dict[str, Any]], procedure_ids: list[str], prior_errors: list[dict[str, Any]]) -> Any:
        """Queue one request's records and wait for its result."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(Job(rows, procedure_ids, prior_errors, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        carry: Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch, n = [first], len(first.rows)
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if n + len(job.rows) > self.max_records:
                    carry = job
                    break
                batch.append(job)
                n += len(job.rows)
            batch = [j for j in batch if not j.future.cancelled()]
            if not batch:
                continue
            self.batches += 1
            self.jobs += len(batch)
            try:
                results = await asyncio.to_thread(self.process, batch)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                logger.exception("batch of %d request(s) failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)
