"""``PredictionWriter``: predictions stored off the answer's path, and nothing lost.

The caller's ``submit`` only appends to a bounded in-memory queue and returns at once
(False, and the records counted as ``dropped``, when the queue is full: the answer never
waits for the store). One thread builds the rows and writes them in batches: when
``batch_records`` records are waiting, or ``flush_seconds`` after the first one came.

When the store cannot be reached, the batch goes to a **spool file** (JSON lines, flushed
and fsync'ed) in ``spool_dir``; from then on every batch is appended behind it, so the
order of writes is kept (a challenger's shadow scores never arrive before their
prediction). Every ``retry_seconds`` the thread tries the store again; once it answers,
the spool is **replayed** in order and deleted. Replay is exactly-once: each prediction
has a unique id and the store skips rows it already holds (``PredictionStore.insert``),
so a batch whose commit was in doubt, or a spool replayed twice after a crash, is stored
once.

Several processes (the service's workers) each spool to their own file and hold a lock
on it; a process that starts adopts and replays the unlocked files a dead one left.

Counters (``counters()``), all in records: ``written`` (stored directly), ``spooled``
(sent to the spool), ``replayed`` (stored from the spool), ``dropped`` (lost: the queue
was full, or a record was refused by the store as invalid, or the spool could not be
written); and ``queued`` (waiting now) and ``spool_pending`` (in spool files now).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from predictionlog.rows import RowBatch

logger = logging.getLogger(__name__)

COUNTERS = ("written", "spooled", "replayed", "dropped")


class Pending(Protocol):
    """What the writer queues: ``predictionlog.rows.Predictions`` or ``ShadowScores``."""

    n_records: int

    def rows(self, secret: bytes) -> RowBatch: ...


class _SpoolFile:
    """One spool file, locked by its owner for as long as it is open."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "a+", encoding="utf-8")
        fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError when another holds it

    def append(self, batch: RowBatch) -> None:
        self.handle.write(batch.to_json() + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def batches(self) -> list[RowBatch]:
        """Every batch in the file; a torn last line (a crash mid-write) is left out."""
        self.handle.seek(0)
        out = []
        for number, line in enumerate(self.handle, 1):
            if not line.endswith("\n"):
                logger.warning("prediction spool %s: line %d is incomplete (a crash while writing); skipped",
                               self.path.name, number)
                continue
            out.append(RowBatch.from_json(line))
        return out

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


class PredictionWriter:
    """The batched writer of one process (module docstring).

    ``store``: a ``PredictionStore`` (anything with ``insert(RowBatch) -> int``);
    ``secret``: the site secret the keys are hashed with; ``spool_dir``: where batches
    wait while the store is unreachable; ``observer(counter, n)`` (optional) hears every
    count as it happens (the service's /metrics). Call ``start()`` once and ``close()`` at exit.
    """

    def __init__(self, store, secret: bytes, spool_dir: Path, max_queue_records: int = 20_000,
                 batch_records: int = 500, flush_seconds: float = 1.0, retry_seconds: float = 5.0,
                 observer: Callable[[str, int], None] | None = None):
        self.store = store
        self._secret = secret
        self.spool_dir = Path(spool_dir)
        self.max_queue_records = max_queue_records
        self.batch_records = batch_records
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self._queue: collections.deque = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._spool_pending = 0
        self._own: _SpoolFile | None = None
        self._store_down_until = 0.0
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._observer = observer

    # ------------------------------------------------------------------ the caller's side

    def start(self) -> "PredictionWriter":
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()
        return self

    def submit(self, pending: Pending, wait_s: float = 0.0) -> bool:
        """Queue one call's predictions; never blocks (the service's calls). False
        (counted ``dropped``) when the queue holds ``max_queue_records`` already or the
        writer is closed. ``wait_s``: wait up to that long for room first (batch scoring,
        which must not drop and may wait)."""
        n = pending.n_records
        deadline = time.monotonic() + wait_s
        with self._cond:
            while (wait_s > 0 and not self._stop and self._queued and self._queued + n > self.max_queue_records
                   and time.monotonic() < deadline):
                self._cond.notify()
                self._cond.wait(min(0.05, max(deadline - time.monotonic(), 0.001)))
            accepted = not self._stop and (self._queued + n <= self.max_queue_records or (wait_s > 0 and not self._queued))
            if accepted:
                self._queue.append(pending)
                self._queued += n
                if self._queued >= self.batch_records:
                    self._cond.notify()
        if not accepted:
            self._count("dropped", n)
        return accepted

    def counters(self) -> dict[str, int]:
        """``written``, ``spooled``, ``replayed``, ``dropped`` (records since start),
        ``queued`` and ``spool_pending`` (records now)."""
        with self._cond:
            return {**self._counts, "queued": self._queued, "spool_pending": self._spool_pending}

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far has been written or spooled (not
        replayed); True if it was within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._queued or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (or spool it), stop the thread, release the spool file."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck on the store: it keeps its spool file until it ends
                logger.warning("prediction writer still busy after %g s; %d record(s) queued", timeout, self._queued)
                return
        if self._own is not None:
            self._own.close()

    # ------------------------------------------------------------------ the thread

    def _take(self) -> list[Pending]:
        """Wait for a batch's worth of records (or flush_seconds after the first one)."""
        with self._cond:
            first = None
            while not self._stop:
                if self._queued and first is None:
                    first = time.monotonic()
                if self._queued >= self.batch_records or (first is not None
                                                          and time.monotonic() - first >= self.flush_seconds):
                    break
                wait = self.flush_seconds if first is None else max(self.flush_seconds - (time.monotonic() - first), 0.001)
                if self._spool_pending and not self._queued:
                    wait = min(wait, max(self._store_down_until - time.monotonic(), 0.05))
                    if time.monotonic() >= self._store_down_until:
                        break  # time to try replaying the spool
                self._cond.wait(wait)
            items, n = [], 0
            while self._queue and n < self.batch_records:
                item = self._queue.popleft()
                items.append(item)
                n += item.n_records
            self._busy = bool(items)
            return items

    def _run(self) -> None:
        self._adopt_spool_files()
        while True:
            items = self._take()
            try:
                if items:
                    self._write(self._rows(items))
                if self._spool_pending and time.monotonic() >= self._store_down_until:
                    self._replay()
            except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                logger.exception("prediction writer: unexpected error")
            finally:
                with self._cond:
                    self._queued -= sum(i.n_records for i in items)
                    self._busy = False
                    self._cond.notify_all()
            with self._cond:
                if self._stop and not self._queue:
                    break
        if self._spool_pending:  # one last try, so a clean stop leaves no spool behind when the store is up
            self._replay()

    def _rows(self, items: list[Pending]) -> RowBatch:
        batch = RowBatch()
        for item in items:
            try:
                batch.extend(item.rows(self._secret))
            except (ValueError, TypeError) as exc:  # a caller's bad shape: lose that call, say why
                logger.error("prediction writer: %d record(s) not logged: %s", item.n_records, exc)
                self._count("dropped", item.n_records)
        return batch

    def _count(self, name: str, n: int) -> None:
        with self._cond:
            self._counts[name] += n
        if self._observer is not None:
            try:
                self._observer(name, n)
            except Exception:  # noqa: BLE001 - metrics must never cost a prediction
                logger.exception("prediction writer: the counter observer failed")

    def _write(self, batch: RowBatch) -> None:
        if not batch.predictions and not batch.scores:
            return
        n = batch.n_records
        if self._spool_pending or time.monotonic() < self._store_down_until:
            self._spool(batch, n)  # behind what is already waiting, to keep the order
            return
        try:
            self._insert(batch)
            self._count("written", n)
        except SQLAlchemyError as exc:
            self._store_down(exc)
            self._spool(batch, n)

    def _insert(self, batch: RowBatch) -> None:
        """Insert; a batch the store refuses as invalid (an integrity error is not an
        outage) is retried call by call, and what is still refused is dropped."""
        try:
            self.store.insert(batch)
        except IntegrityError:
            by_id: dict[str, RowBatch] = {}
            for r in batch.predictions:
                by_id.setdefault(r["prediction_id"], RowBatch()).predictions.append(r)
            for r in batch.scores:
                by_id.setdefault(r["prediction_id"], RowBatch()).scores.append(r)
            for pid, part in by_id.items():
                try:
                    self.store.insert(part)
                except IntegrityError as exc:
                    logger.error("prediction writer: prediction %s refused by the store (%s); dropped", pid,
                                 type(exc.orig).__name__ if exc.orig is not None else "integrity error")
                    self._count("dropped", 1)

    def _store_down(self, exc: Exception) -> None:
        if time.monotonic() >= self._store_down_until:
            logger.warning("prediction store unreachable (%s); spooling to %s and retrying every %g s",
                           type(exc).__name__, self.spool_dir, self.retry_seconds)
        self._store_down_until = time.monotonic() + self.retry_seconds

    def _spool(self, batch: RowBatch, n: int) -> None:
        try:
            if self._own is None:
                self._own = _SpoolFile(self.spool_dir / f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
            self._own.append(batch)
        except OSError as exc:
            logger.error("prediction writer: %d record(s) lost, the spool cannot be written (%s)", n, exc.strerror)
            self._count("dropped", n)
            return
        self._count("spooled", n)
        with self._cond:
            self._spool_pending += n

    def _adopt_spool_files(self) -> None:
        """Count the records in spool files no live process holds (left by a crash)."""
        for path in sorted(self.spool_dir.glob("spool-*.jsonl")):
            try:
                spool = _SpoolFile(path)
            except BlockingIOError:
                continue  # a live writer's own file
            except OSError:
                continue
            n = sum(b.n_records for b in spool.batches())
            spool.close()
            if n:
                with self._cond:
                    self._spool_pending += n
                logger.info("prediction spool %s: %d record(s) left by an earlier process, to replay", path.name, n)

    def _replay(self) -> None:
        """Store every spooled batch in order (own file last: it holds the newest), then
        delete the files. Stops at the first failure; the rest waits for the next try."""
        paths = sorted(self.spool_dir.glob("spool-*.jsonl"), key=lambda p: p.stat().st_mtime)
        if self._own is not None:
            paths = [p for p in paths if p != self._own.path] + [self._own.path]
        for path in paths:
            own = self._own is not None and path == self._own.path
            try:
                spool = self._own if own else _SpoolFile(path)
            except (BlockingIOError, FileNotFoundError):
                continue
            try:
                batches = spool.batches()
                for b in batches:
                    self._insert(b)
            except SQLAlchemyError as exc:
                self._store_down(exc)
                if not own:
                    spool.close()
                return
            n = sum(b.n_records for b in batches)
            spool.remove()
            if own:
                self._own = None
            self._count("replayed", n)
            with self._cond:
                self._spool_pending = max(self._spool_pending - n, 0)
            logger.info("prediction spool %s replayed: %d record(s)", path.name, n)
        with self._cond:
            # Every file is done (another process may have replayed an orphan both counted).
            self._spool_pending = 0
        self._store_down_until = 0.0
