"""The served-feature log of one serving worker: a sample of the lookups it answered, written in the background.

The request path only offers: :meth:`ServedLog.offer` decides with one ``random()`` whether the lookup is sampled
(``serving.log.sample_rate``, or its service's rate in ``serving.log.services``) and appends references (the
:class:`~features.lookup.LookupResult` the answer was written from, never copied) to a bounded deque. A full
queue drops the lookup and counts it: the answer never waits and never fails for the log.

Every :data:`TICK_SECONDS` a task on the worker's event loop turns what was queued by then into rows
(:func:`features.served_log.to_rows`), :data:`CHUNK` lookups at a time with the waiting requests served between
chunks, and every ``serving.log.flush_seconds`` a thread writes the rows as one Parquet batch in the landing
folder (:func:`features.served_log.write_batch`: temporary name, then rename; Arrow's writer, mostly outside the
GIL). Turning rows in a thread was measured worse (``bench/log_cost.py``): one second's lookups in one go held
the GIL ~40 ms at 3,000 req/s and p99 under load grew 4x; in chunks with pauses, the two threads handing the GIL
back and forth on a busy machine cost ~40% of req/s. On the loop the cost is its CPU time (see
docs/ARCHITECTURE.md, "Served-feature log", for what is measured and not yet explained).
``skewless log land`` appends the batches to the log's Delta table (:mod:`offline.served_log`). A worker killed
without warning loses what it had queued since its last flush: at most one flush interval of lookups (plus those
of a flush under way); a worker stopped the ordinary way flushes the rest on shutdown.

The counters (:attr:`ServedLog.offered`, ``sampled_out``, ``dropped``, ``written``, ``failed``) are plain
attributes, for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from features.served_log import LoggedLookup, to_rows, write_batch
from serving_api.log_throttle import ThrottledLog

if TYPE_CHECKING:
    import pyarrow as pa

    from features.config import RepoConfig
    from features.lookup import LookupResult

logger = logging.getLogger(__name__)
_flush_errors = ThrottledLog(logger)  # a full disk fails every flush: one line per interval, not per second

Writer = Callable[["pa.Table"], object]  # writes one batch of rows (default: into the repository's landing folder)
# What the request path queues: (request id, served micros, service, result, request data). A tuple, not yet a
# LoggedLookup: building the frozen dataclass costs ~1 µs, the flusher does it off the request path.
Queued = tuple[str, int, "str | None", "LookupResult", "Mapping[str, Sequence[Any]] | None"]
TICK_SECONDS = 0.05  # how often queued lookups are turned into rows
CHUNK = 256  # lookups turned into rows at once, on the event loop (~2 ms), before the requests waiting


class ServedLog:
    """One worker's log of answered lookups: :meth:`offer` on the request path, :meth:`start` (in the app's
    lifespan) for the background work, :meth:`stop` at shutdown.

    >>> served = ServedLog.from_config(config)                 # doctest: +SKIP
    >>> await served.start(); served.offer(request_id, "fraud_model", result, request_data)  # doctest: +SKIP
    """

    def __init__(
        self,
        write: Writer,
        *,
        sample_rate: float = 0.0,
        services: Mapping[str, float] | None = None,
        flush_seconds: float = 1.0,
        queue_size: int = 10_000,
    ) -> None:
        self.write = write
        self.sample_rate = sample_rate
        self.services = dict(services or {})
        self.flush_seconds = flush_seconds
        self.queue_size = queue_size
        self._queue: deque[Queued] = deque()  # append and popleft are atomic: no lock on the request path
        self._task: asyncio.Task[None] | None = None  # turns queued lookups into rows, on the event loop
        self._writer: ThreadPoolExecutor | None = None  # writes the batches (Parquet, a file: off the loop)
        self._rows: list[pa.Table] = []  # rows of lookups taken from the queue, not written yet
        self._converted = 0  # the lookups of self._rows
        self.offered = 0  # lookups answered and offered to the log
        self.sampled_out = 0  # not sampled (the sample rate said no)
        self.dropped = 0  # sampled, but the queue was full
        self.written = 0  # lookups written to the landing folder
        self.failed = 0  # lookups lost because their flush failed (the log says why)

    @classmethod
    def from_config(cls, config: RepoConfig) -> ServedLog | None:
        """The log ``serving.log`` asks for, writing into the repository's landing folder; None when every rate
        is 0 (the log is off, and the request path does not even offer)."""
        if config.log_sample_rate <= 0 and not any(rate > 0 for rate in config.log_services.values()):
            return None
        return cls(
            lambda rows: write_batch(config, rows),
            sample_rate=config.log_sample_rate,
            services=config.log_services,
            flush_seconds=config.log_flush_seconds,
            queue_size=config.log_queue_size,
        )

    def offer(
        self,
        request_id: str,
        service: str | None,
        result: LookupResult,
        request_data: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        """Log an answered lookup, if sampled and there is room; O(1), never blocks, never raises."""
        self.offered += 1
        rate = self.services.get(service, self.sample_rate) if service is not None else self.sample_rate
        if rate < 1.0 and random.random() >= rate:
            self.sampled_out += 1
            return
        if len(self._queue) + self._converted >= self.queue_size:
            self.dropped += 1
            return
        self._queue.append((request_id, result.at_micros, service, result, request_data))

    @property
    def queued(self) -> int:
        """Lookups waiting for the next flush (in the queue, or turned into rows already)."""
        return len(self._queue) + self._converted

    def unknown_services(self, known: Iterable[str]) -> list[str]:
        """The services of ``serving.log.services`` that ``known`` (the plan's feature services) does not name."""
        return sorted(set(self.services) - set(known))

    async def start(self) -> None:
        """Start turning queued lookups into rows on the running event loop, and writing them in a thread."""
        if self._task is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="skewless-served-log")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="skewless-served-log")

    async def stop(self) -> None:
        """Stop the background work and write what is still queued (the worker's shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # a write under way finishes
            self._writer = None
        self.flush()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        while True:
            await asyncio.sleep(min(TICK_SECONDS, self.flush_seconds))
            # What was queued by now, not what arrives meanwhile: under load the queue never empties, and
            # chasing it turned ~18 lookups a call, where to_rows's fixed cost made a lookup cost ~60 µs.
            remaining = len(self._queue)
            while remaining > 0:
                self._convert(min(CHUNK, remaining))
                remaining -= CHUNK
                await asyncio.sleep(0)  # the requests waiting go first
            if loop.time() - last_flush >= self.flush_seconds:
                last_flush = loop.time()
                rows, count = self._take()
                if count:
                    await loop.run_in_executor(self._writer, self._write, rows, count)

    def _convert(self, limit: int | None = None) -> None:
        """Turn up to ``limit`` queued lookups (all when None) into rows."""
        size = len(self._queue) if limit is None else min(limit, len(self._queue))
        if not size:
            return
        self._converted += size  # before taking them out: offer never sees room that is not there
        chunk = [LoggedLookup(*self._queue.popleft()) for _ in range(size)]
        try:
            self._rows.append(to_rows(chunk))
        except Exception as exc:
            self._converted -= size
            self._lost(size, exc)

    def _take(self) -> tuple[list[pa.Table], int]:
        """The rows turned so far and their lookups, handed over to a write."""
        rows, count = self._rows, self._converted
        self._rows, self._converted = [], 0
        return rows, count

    def _write(self, rows: list[pa.Table], count: int) -> int:
        import pyarrow as pa

        try:
            self.write(pa.concat_tables(rows))
        except Exception as exc:
            self._lost(count, exc)
            return 0
        self.written += count
        return count

    def flush(self) -> int:
        """Write every queued lookup as one batch, now, in the caller's thread; the lookups written. Errors are
        logged (throttled), and the lookups of a failed batch counted in :attr:`failed`: the log never retries
        into an unbounded backlog."""
        self._convert()
        rows, count = self._take()
        return self._write(rows, count) if count else 0

    def _lost(self, count: int, exc: Exception) -> None:
        self.failed += count
        _flush_errors.warning("served-feature log: could not write %d lookup(s): %s", count, exc)
