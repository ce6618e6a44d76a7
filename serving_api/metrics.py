"""``GET /metrics``: the service's metrics in Prometheus's text format, through the official client
(``prometheus_client``), correct with several workers.

Metrics (every name starts with ``skewless_``):

================================================  ==========  ===========================================
``http_requests_total``                           counter     per ``endpoint``, ``service``, ``status``
``http_request_duration_seconds``                 histogram   per ``endpoint``, ``service``
``served_statuses_total``                         counter     per ``view``, ``status`` (present, missing,
                                                              expired): one per entity and view served
``online_snapshot_age_seconds``                   gauge       per ``view``: now minus the live snapshot's
                                                              publication, worked out at scrape time
``online_store_errors_total``                     counter     per ``kind`` (``timeout``, ``error``): the
                                                              online store failures answered 503
``<name>_total`` of :func:`register_counters`     counter     counters kept by other parts of the service
================================================  ==========  ===========================================

``endpoint`` is the route (``/v1/features``, ``/get-online-features``, ``/v1/push``, ``/health``, ``/metrics``,
``/docs``, ``/openapi.json``, ``/ui`` for the catalog's pages), ``other`` for any other path, so a caller cannot
make new series by asking for new paths; ``service`` is the feature service a lookup named, ``features`` for a
plain features list, empty for other endpoints and for a lookup that named no known service (refused before).

Several workers (``skewless serve --workers N``): ``prometheus_client``'s multiprocess mode. ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start (each worker writes its values to
memory-mapped files there) and removes it at exit; any worker answering a scrape sums every worker's files, so
the counts are the service's whole. Its limits, none of which this module needs: no custom collector is summed
across workers (the snapshot age is not per worker: the worker answering works it out), no ``Info`` or
``Enum``, gauges summed or maxed by their ``multiprocess_mode``.

Per request the service adds to plain dictionaries of this process (a count, a latency bucket, for a lookup the
statuses per view: ~1-2 µs of a ~300 µs lookup); each worker copies them into Prometheus's values every
:data:`SYNC_SECONDS` on its event loop, between requests, and the worker answering a scrape copies its own first.
So a scrape shows the other workers' requests of the last second or so at the next scrape: nothing is lost, and
Prometheus scrapes every 15 s or more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from features.errors import OnlineStoreError, SkewlessError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from features.lookup import LookupResult
    from features.protocols import OnlineStore
    from features.registry import PlanVersion

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = frozenset(
    {"/v1/features", "/get-online-features", "/v1/push", "/health", METRICS_PATH, "/docs", "/openapi.json", "/redoc"}
)
# Lookups take ~0.3 ms in-process, a few ms over a network; the tail is what an operator watches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
SYNC_SECONDS = 1.0  # how often each worker copies its counts into Prometheus's values (see ServiceMetrics.sync)

#: The service label of the request being answered (set by the lookup handler once the service is known).
SERVICE: ContextVar[str] = ContextVar("skewless_metrics_service", default="")


def endpoint_of(path: str) -> str:
    """The ``endpoint`` label of a request path: bounded, whatever the caller asks for."""
    if path in ENDPOINTS:
        return path
    if path == "/ui" or path.startswith("/ui/"):
        return "/ui"
    return "other"


class ServiceMetrics:
    """This process's metrics (one per process: ``prometheus_client`` keeps multiprocess values per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # A registry of its own (not the library's global one, which also exports the process's own metrics
        # that multiprocess mode cannot sum); in multiprocess mode the values live in the files anyway.
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "skewless_http_requests",
            "HTTP requests answered, per endpoint, feature service and status",
            ["endpoint", "service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skewless_http_request_duration_seconds",
            "time from a request's arrival to its answer, per endpoint and feature service",
            ["endpoint", "service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.statuses = Counter(
            "skewless_served_statuses",
            "entities served per view and status (present, missing, expired)",
            ["view", "status"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "skewless_online_store_errors",
            "online store failures answered 503, per kind (timeout, error)",
            ["kind"],
            registry=self.registry,
        )
        # Per request, plain numbers only (cumulative, this process's): copied into Prometheus's values by
        # sync(), every SYNC_SECONDS and at each scrape. An increment of a multiprocess value takes a lock and
        # writes a memory-mapped file: a lookup's five took ~9 µs, against ~2 µs for the work below (measured
        # together, on a busy machine).
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latencies: dict[tuple[str, str], list[float]] = {}  # a count per bucket, then the sum
        self._served: dict[tuple[str, str], int] = {}
        # The columns of a lookup -> one column of each view they hold (a server answers a handful of selections).
        self._one_per_view: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        self._copied: dict[tuple[Any, ...], float] = {}  # what sync() copied of each count, by its key
        self._extra: list[tuple[Callable[[], Mapping[str, float]], Any, dict[str, float]]] = []
        self._sync_lock = threading.Lock()
        self._ticking: asyncio.AbstractEventLoop | None = None  # the event loop sync() is scheduled on

    # -- per request (the hot path: plain dictionaries and lists, see sync) -------------------------------------
    def answered(self, path: str, status: int, seconds: float) -> None:
        service = SERVICE.get()
        endpoint = endpoint_of(path)
        key = (endpoint, service, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latencies = self._latencies.get((endpoint, service))
        if latencies is None:
            latencies = self._latencies[endpoint, service] = [0.0] * (len(_BOUNDS) + 1)
        latencies[bisect_left(_BOUNDS, seconds)] += 1  # the first bucket whose bound is >= seconds
        latencies[-1] += seconds
        if self._ticking is None or self._ticking.is_closed():  # the first request on this event loop
            self._tick()

    def served(self, result: LookupResult) -> None:
        """Count the statuses of a lookup's answer: per view, one per entity (a view's features share them)."""
        served = self._served
        columns = tuple(result.features)
        one_per_view = self._one_per_view.get(columns)
        if one_per_view is None:
            if len(self._one_per_view) >= 1024:  # callers choosing ever new selections: bounded all the same
                self._one_per_view.clear()
            seen: dict[str, str] = {}
            for column in columns:  # names never hold "__" (features.definitions): the view is before it
                seen.setdefault(column.split("__", 1)[0], column)
            one_per_view = self._one_per_view[columns] = list(seen.items())
        features = result.features
        for view, column in one_per_view:
            statuses = features[column].statuses
            if len(statuses) == 1:  # one entity, the common lookup: its one status
                key = (view, statuses[0])
                served[key] = served.get(key, 0) + 1
                continue
            for status in ("present", "missing", "expired"):
                count = statuses.count(status)
                if count:
                    served[view, status] = served.get((view, status), 0) + count

    def store_failed(self, exc: OnlineStoreError) -> None:
        # Rare (an outage): straight into Prometheus's counter. The store translates redis' and asyncio's
        # errors; a timeout is one whose cause is named so.
        cause = exc.__cause__
        timeout = isinstance(cause, TimeoutError) or type(cause).__name__ == "TimeoutError"
        self.store_errors.labels("timeout" if timeout else "error").inc()

    def sync(self) -> None:
        """Copy what the plain counts gained since the last copy into Prometheus's values (in multiprocess mode:
        this worker's files, which a scrape of any worker sums). Runs beside the event loop: it only reads the
        counts, which only grow, so an increment it misses is copied the next time."""
        with self._sync_lock:
            for counted, count in list(self._requests.items()):
                if gained := self._gained(("requests", *counted), count):
                    endpoint, service, status = counted
                    self.requests.labels(endpoint, service, str(status)).inc(gained)
            for served, total in list(self._served.items()):
                if gained := self._gained(("served", *served), total):
                    self.statuses.labels(*served).inc(gained)
            for timed, latencies in list(self._latencies.items()):
                histogram = self.latency.labels(*timed)
                # Histogram has no "add n observations": its per-bucket values and sum (prometheus_client keeps
                # one value per bucket, cumulated at exposition; tests/serving/test_metrics.py checks the result).
                parts = [*histogram._buckets, histogram._sum]
                for index, value in enumerate(list(latencies)):
                    if gained := self._gained(("latency", *timed, index), value):
                        parts[index].inc(gained)
            for read, counter, copied in self._extra:
                try:
                    values = read()
                except Exception:
                    logger.warning("could not read counters for /metrics", exc_info=True)
                    continue
                for name, value in values.items():
                    gained = value - copied.get(name, 0)
                    if gained > 0:
                        counter.labels(name).inc(gained)
                        copied[name] = value

    def _gained(self, key: tuple[Any, ...], value: float) -> float:
        """What ``value`` (a count that only grows, under ``key``) gained since the last copy; now copied."""
        gained = value - self._copied.get(key, 0)
        if gained <= 0:
            return 0
        self._copied[key] = value
        return gained

    def _tick(self) -> None:
        """Copy the counts now and again in :data:`SYNC_SECONDS`, on the worker's event loop, between requests: no
        thread beside the loop, whose wake-ups would contend for the GIL with the requests."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # counted outside a server (a test): copied at the next scrape
            return
        self._ticking = loop
        loop.call_later(SYNC_SECONDS, self._tick)
        try:
            self.sync()
        except Exception:  # the next tick copies what this one missed
            logger.warning("could not copy the metrics", exc_info=True)

    # -- counters kept elsewhere ----------------------------------------------------------------------------------
    def register_counters(self, prefix: str, read: Callable[[], Mapping[str, float]], documentation: str) -> None:
        """Export counters another part of the service keeps as plain numbers: ``read()`` returns their
        cumulative values by name (e.g. ``{"offered": 10, "dropped": 0}``), exported as
        ``skewless_<prefix>_total{counter="<name>"}`` and copied by :meth:`sync` like the request counts (each
        worker registers its own: every worker's counts reach the sum)."""
        from prometheus_client import Counter

        counter = Counter(f"skewless_{prefix}", documentation, ["counter"], registry=self.registry)
        with self._sync_lock:
            self._extra.append((read, counter, {}))

    # -- the scrape -----------------------------------------------------------------------------------------------
    def exposition(self, snapshot_ages: Callable[[], Iterator[tuple[str, float]]]) -> bytes:
        """The text a scrape gets: every worker's values (multiprocess mode) or this process's, and each view's
        snapshot age."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sync()
        registry: CollectorRegistry
        if os.environ.get(ENV_MULTIPROC):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = CollectorRegistry()
            registry.register(_Forward(self.registry))
        registry.register(_SnapshotAges(snapshot_ages))
        return generate_latest(registry)


class _Forward:
    """A collector that yields another registry's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self._registry.collect()


class _SnapshotAges:
    """``skewless_online_snapshot_age_seconds``, read at scrape time."""

    def __init__(self, ages: Callable[[], Iterator[tuple[str, float]]]) -> None:
        self._ages = ages

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "skewless_online_snapshot_age_seconds",
            "seconds since the live online snapshot of each view was published (views never published: absent)",
            labels=["view"],
        )
        for view, age in self._ages():
            family.add_metric([view], age)
        yield family


def snapshot_ages(plans: Callable[[], PlanVersion], store: OnlineStore) -> Callable[[], Iterator[tuple[str, float]]]:
    """Each online view's snapshot age, as of the call (one pointer read per view). When the plan or the
    store cannot be read, no ages (and a log line): the requests' and errors' metrics still go out."""

    def ages() -> Iterator[tuple[str, float]]:
        try:
            views = [v for v in plans().plan.views if v.online]
            live = [(view.name, store.live_snapshot(view)) for view in views]
        except SkewlessError as exc:
            logger.warning("/metrics: no snapshot ages: %s", exc)
            return
        now = datetime.now(UTC)
        for name, snapshot in live:
            if snapshot is not None:
                yield name, (now - snapshot.published_at).total_seconds()

    return ages


_metrics: ServiceMetrics | None = None
_metrics_lock = threading.Lock()


def service_metrics() -> ServiceMetrics:
    """This process's metrics, created on first use (after ``serve`` set :data:`ENV_MULTIPROC`)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = ServiceMetrics()
        return _metrics


def register_counters(prefix: str, read: Callable[[], Mapping[str, float]], documentation: str) -> None:
    """Export plain counters at ``/metrics`` (see :meth:`ServiceMetrics.register_counters`): the hook for the
    served-feature log's queue (offered, sampled out, dropped, written)."""
    service_metrics().register_counters(prefix, read, documentation)


def record_store_error(exc: OnlineStoreError) -> None:
    """Count an online store failure answered 503 (nothing when no app of this process serves metrics)."""
    if _metrics is not None:
        _metrics.store_failed(exc)
