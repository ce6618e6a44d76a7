"""The served-feature log of one serving worker: a sample of the lookups it answered, written in the background.

The request path only offers: :meth:`ServedLog.offer` decides with one ``random()`` whether the lookup is sampled
(``serving.log.sample_rate``, or its service's rate in ``serving.log.services``) and appends references (the
:class:`~features.lookup.LookupResult` the answer was written from, never copied) to a bounded deque. A full
queue drops the lookup and counts it: the answer never waits and never fails for the log.

A background thread turns what is queued into rows (:func:`features.served_log.to_rows`) in small chunks, every
:data:`TICK_SECONDS`, pausing between chunks, and every ``serving.log.flush_seconds`` writes the rows as one
Parquet batch in the landing folder (:func:`features.served_log.write_batch`: temporary name, then rename).
Converting a second's lookups in one go held the GIL for ~40 ms at 3,000 req/s, and p99 under load grew 4x
(``bench/log_cost.py``): in chunks of :data:`CHUNK` lookups the event loop waits at most about a millisecond.
``skewless log land`` appends the batches to the log's Delta table (:mod:`offline.served_log`). A worker killed
without warning loses what it had queued since its last flush: at most one flush interval of lookups (plus those
of a flush under way); a worker stopped the ordinary way flushes the rest on shutdown.

The counters (:attr:`ServedLog.offered`, ``sampled_out``, ``dropped``, ``written``, ``failed``) are plain
attributes, for ``/metrics``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
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
TICK_SECONDS = 0.05  # how often the flusher turns queued lookups into rows
CHUNK = 64  # lookups turned into rows at once (~0.5-1 ms of Python holding the GIL) ...
PAUSE_SECONDS = 0.001  # ... then the flusher sleeps, so the event loop takes the GIL back


class ServedLog:
    """One worker's log of answered lookups: :meth:`offer` on the event loop, a flusher thread behind it.

    >>> served = ServedLog.from_config(config)                 # doctest: +SKIP
    >>> served.start(); served.offer(request_id, "fraud_model", result, request_data); served.stop()  # doctest: +SKIP
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # the flusher thread and the final flush at shutdown
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

    def start(self) -> None:
        """Start the flusher thread (a daemon: a worker that exits without :meth:`stop` does not wait for it)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="skewless-served-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the flusher thread and write what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.wait(min(TICK_SECONDS, self.flush_seconds)):
            self._convert(pause=PAUSE_SECONDS)
            if time.monotonic() - last_flush >= self.flush_seconds:
                last_flush = time.monotonic()
                self.flush()

    def _convert(self, pause: float = 0.0) -> None:
        """Turn the queued lookups into rows, :data:`CHUNK` at a time, sleeping ``pause`` between chunks."""
        while self._queue:
            with self._flushing:
                size = min(CHUNK, len(self._queue))
                self._converted += size  # before taking them out: offer never sees room that is not there
                chunk = [LoggedLookup(*self._queue.popleft()) for _ in range(size)]
                try:
                    self._rows.append(to_rows(chunk))
                except Exception as exc:
                    self._converted -= size
                    self._lost(size, exc)
            if pause:
                time.sleep(pause)

    def flush(self) -> int:
        """Write every queued lookup as one batch; the lookups written. Errors are logged (throttled), and the
        lookups of a failed batch counted in :attr:`failed`: the log never retries into an unbounded backlog."""
        import pyarrow as pa

        self._convert()
        with self._flushing:
            rows, count = self._rows, self._converted
            self._rows, self._converted = [], 0
            if not rows:
                return 0
            try:
                self.write(pa.concat_tables(rows))
            except Exception as exc:
                self._lost(count, exc)
                return 0
            self.written += count
            return count

    def _lost(self, count: int, exc: Exception) -> None:
        self.failed += count
        _flush_errors.warning("served-feature log: could not write %d lookup(s): %s", count, exc)
