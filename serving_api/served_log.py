"""The served-feature log of one serving worker: a sample of the lookups it answered, written in the background.

The request path only offers: :meth:`ServedLog.offer` decides with one ``random()`` whether the lookup is sampled
(``serving.log.sample_rate``, or its service's rate in ``serving.log.services``), and a sampled lookup becomes
one JSON line (:func:`features.served_log.raw_line`): the bytes of the answer the service already wrote
(``POST /v1/features``; Feast's door encodes the native answer once more) embedded as they are, with the request
id, the time, the service, the request data and the snapshot versions read, ~2 µs. A full queue drops the lookup
and counts it: the answer never waits and never fails for the log.

Every ``serving.log.flush_seconds`` a thread joins the queued lines and writes them as one file in the landing
folder (:func:`features.served_log.write_lines`: temporary name, then rename): one ``join`` and one write, so it
hardly holds the GIL. Nothing is expanded into the log's rows here: ``skewless log land`` does that
(:func:`features.served_log.rows_from_lines`) when it appends the batches to the log's Delta table
(:mod:`offline.served_log`). Expanding each lookup in the worker, the first design, cost 0.67x of the unlogged
req/s; a Parquet batch of the raw answers built in a thread still held the GIL long enough to multiply p99 under
load (``bench/log_cost.py``). A worker killed without warning loses what it had queued since its last flush: at
most one flush interval of lookups (plus those of a write under way); a worker stopped the ordinary way writes the
rest on shutdown.

The counters (:attr:`ServedLog.offered`, ``sampled_out``, ``dropped``, ``written``, ``failed``) are plain
attributes, for ``/metrics``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from features.served_log import raw_line, write_lines
from serving_api.log_throttle import ThrottledLog

if TYPE_CHECKING:
    from features.config import RepoConfig
    from features.lookup import LookupResult

logger = logging.getLogger(__name__)
_flush_errors = ThrottledLog(logger)  # a full disk fails every flush: one line per interval, not per second

Writer = Callable[[list[bytes]], object]  # writes one batch of lines (default: into the repository's landing folder)


class ServedLog:
    """One worker's log of answered lookups: :meth:`offer` on the request path, :meth:`start` (in the app's
    lifespan) for the background writer, :meth:`stop` at shutdown.

    >>> served = ServedLog.from_config(config)                 # doctest: +SKIP
    >>> await served.start(); served.offer(request_id, "fraud_model", result, request_data, answer)  # doctest: +SKIP
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
        self._queue: deque[bytes] = deque()  # append and popleft are atomic: no lock on the request path
        self._in_flight = 0  # lookups taken from the queue by a write under way
        self._lock = threading.Lock()  # one write at a time (the writer thread, or stop's last flush)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
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
            lambda lines: write_lines(config, lines),
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
        answer: bytes | None = None,
    ) -> None:
        """Log an answered lookup, if sampled and there is room; O(1), never blocks, never raises. ``answer``:
        the bytes of the native answer (``result.to_json()``) when the service wrote them already."""
        self.offered += 1
        rate = self.services.get(service, self.sample_rate) if service is not None else self.sample_rate
        if rate < 1.0 and random.random() >= rate:
            self.sampled_out += 1
            return
        if len(self._queue) + self._in_flight >= self.queue_size:
            self.dropped += 1
            return
        try:
            encoded = result.to_json() if answer is None else answer
            line = raw_line(request_id, result.at_micros, service, encoded, request_data, result.snapshots)
        except Exception as exc:  # a value JSON cannot hold: the lookup is answered, not logged
            self._lost(1, exc)
            return
        self._queue.append(line)

    @property
    def queued(self) -> int:
        """Lookups waiting for the next flush (in the queue, or in a write under way)."""
        return len(self._queue) + self._in_flight

    def unknown_services(self, known: Iterable[str]) -> list[str]:
        """The services of ``serving.log.services`` that ``known`` (the plan's feature services) does not name."""
        return sorted(set(self.services) - set(known))

    async def start(self) -> None:
        """Start the thread that writes what is queued every ``flush_seconds``."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="skewless-served-log", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop the writer and write what is still queued (the worker's shutdown)."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(self.flush_seconds):
            self.flush()

    def flush(self) -> int:
        """Write every queued lookup as one raw batch, now, in the caller's thread; the lookups written. Errors
        are logged (throttled), and the lookups of a failed batch counted in :attr:`failed`: the log never
        retries into an unbounded backlog."""
        with self._lock:
            size = len(self._queue)
            if not size:
                return 0
            self._in_flight = size  # before taking them out: offer never sees room that is not there
            taken = [self._queue.popleft() for _ in range(size)]
            try:
                self.write(taken)
            except Exception as exc:
                self._lost(size, exc)
                return 0
            finally:
                self._in_flight = 0
            self.written += size
            return size

    def _lost(self, count: int, exc: Exception) -> None:
        self.failed += count
        _flush_errors.warning("served-feature log: could not write %d lookup(s): %s", count, exc)
