"""The HTTP lookup service: ``POST /v1/features``, ``POST /v1/push`` (:mod:`serving_api.push`), ``GET /health``,
OpenAPI at ``/docs``, and Feast's ``POST /get-online-features`` (:mod:`serving_api.feast_door`: the same lookup,
in Feast's request and answer).

It runs the lookup :func:`features.lookup.prepare` compiles, the same read path as
``FeatureStore.get_online_features`` (one handler, :func:`lookup_handler`, answers ``POST /v1/features`` however
the request arrives), and is the only place where errors become HTTP statuses:

==============================================  ======
no token, or one not configured                 401 (before the body is read: :mod:`serving_api.guard`)
a token without the service, view or catalog    403
a body larger than ``serving.max_body_bytes``   413 (before the rest is read)
a body that is not ``application/json``         415
unknown feature, view or feature service        404
malformed body, wrong key type, missing key,    422
offline-only view, bad ``request_data``, a
push's missing or mistyped column
a push to a view served from another definition 409
online store or registry unreachable            503 (a safe message; the details go to the log, redacted)
an on-demand function raised or returned        500 (``{"error", "type", "view", "function"}``)
something other than its outputs
anything else                                   500 (``{"error": ...}``, never a traceback)
==============================================  ======

Every error body has ``error``, ``type`` and ``request_id`` (also the ``X-Request-ID`` header of every answer,
and in the log line of a failed request), and echoes no more than a bounded part of the caller's text
(:mod:`serving_api.answers`).

On-demand functions are imported when a plan version is first served and checked against the plan's source
fingerprints: a mismatch fails startup, and a refreshed plan whose functions do not load is not served (the
previous version stays, and the log says why).

Run it with ``skewless serve`` or ``uvicorn --factory serving_api.app:app_from_env`` (``SKEWLESS_REPO``
names the repository).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from features.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ENTITIES, DEFAULT_MAX_REQUEST_FIELDS
from features.contracts import ContractCache
from features.errors import (
    BadRequestError,
    ContractConflictError,
    EntityKeyError,
    OnlineStoreError,
    RegistryError,
    SkewlessError,
    UnknownNameError,
)
from features.functions import FunctionLoader, FunctionLoadError
from features.lookup import Lookup, LookupResult, OfflineOnlyViewError, prepare
from features.on_demand import OnDemandFunctionError
from features.plan import Plan
from features.protocols import OnlineStore
from features.redaction import redact_text
from features.registry import PlanVersion
from serving_api.answers import REQUEST_ID, Answer, JSONAnswer, answer_of, error, json_response, send_json
from serving_api.auth import Authenticator, Grant
from serving_api.feast_door import FEAST, add_feast_door
from serving_api.guard import GRANT, Gate, TaggedSend, replay
from serving_api.log_throttle import ThrottledLog
from serving_api.metrics import (
    CONTENT_TYPE,
    METRICS_PATH,
    SERVICE,
    ServiceMetrics,
    record_store_error,
    service_metrics,
    snapshot_ages,
)
from serving_api.served_log import ServedLog

if TYPE_CHECKING:
    from features.store import FeatureStore

logger = logging.getLogger(__name__)
_unavailable_log = ThrottledLog(logger)  # one line per 503 would bury the log while a store is down

ENV_REPO = "SKEWLESS_REPO"
ENV_OPENTELEMETRY = "SKEWLESS_OPENTELEMETRY"
LOOKUP_PATH = "/v1/features"
PlanProvider = Callable[[], PlanVersion]
# The answer to a lookup's body, for a caller's grant (see lookup_handler).
LookupHandler = Callable[[bytes, Grant], Awaitable[Answer]]


# -- request and answer models (they make the OpenAPI schema at /docs useful) ---------------------------------


class FeaturesRequest(BaseModel):
    """Which features, for which entities. Give exactly one of ``features`` and ``feature_service``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"features": ["card_profile:credit_limit"], "entities": {"card_id": [1, 2]}},
                {
                    "feature_service": "fraud_model",
                    "entities": {"card_id": [1], "merchant_id": [7]},
                    "request_data": {"amount": [25.0], "fx_rate": [1.0]},
                },
            ]
        },
    )

    features: list[str] | None = Field(
        None, min_length=1, description="feature references, 'view:feature' ('view:*' for every feature of a view)"
    )
    feature_service: str | None = Field(None, description="a feature service name")
    contract: str | None = Field(
        None,
        description="a training contract: served only with the definitions the model was trained on (409 when one "
        "changed); alone, it asks for every feature of the contract",
    )
    entities: dict[str, list[Any]] = Field(description="join-key columns: one list of values per key, equal lengths")
    request_data: dict[str, Any] | None = Field(
        None,
        description="request-time values of on-demand features: one list per request field, one value per entity",
    )

    @model_validator(mode="after")
    def _one_selection(self) -> FeaturesRequest:
        if self.features is not None and self.feature_service is not None:
            raise ValueError("give exactly one of 'features' and 'feature_service' (or a 'contract')")
        if self.features is None and self.feature_service is None and self.contract is None:
            raise ValueError("give exactly one of 'features' and 'feature_service' (or a 'contract')")
        return self


class FeatureColumn(BaseModel):
    values: list[Any] = Field(
        description="null when missing or expired; non-finite floats as 'NaN', "
        "'Infinity', '-Infinity'; timestamps as ISO-8601 UTC"
    )
    statuses: list[str] = Field(description="'present', 'missing' or 'expired' per entity")
    event_timestamps: list[str | None] = Field(description="event time of the row served, ISO-8601 UTC")


class FeaturesAnswer(BaseModel):
    plan_version: int | None
    entities: dict[str, list[Any]]
    features: dict[str, FeatureColumn] = Field(description="one column per feature, named '<view>__<feature>'")


class ErrorAnswer(BaseModel):
    error: str
    type: str
    request_id: str = Field(description="the X-Request-ID of the answer, also in the server's log line")
    kind: str | None = Field(None, description="what an unknown name names: 'feature', 'view', ... (404)")
    name: str | None = Field(None, description="the unknown name, cut to 200 characters (404)")
    known: list[str] | None = None
    view: str | None = Field(None, description="the on-demand view whose function failed (500)")
    function: str | None = Field(None, description="that function, 'module:qualname' (500)")


class HealthAnswer(BaseModel):
    status: str
    plan_version: int | None = None
    error: str | None = None
    request_id: str | None = None


# -- the plan cache -------------------------------------------------------------------------------------------


class PlanCache:
    """The latest plan version, re-read from ``provider`` at most every ``refresh_seconds``.

    A failed refresh keeps serving the plan it has (and logs why); only the first read can fail. ``accept``
    (loading a version's on-demand functions) runs before a new version is served: when it fails, the version
    is refused once (and the log says why) and the previous one stays.
    """

    def __init__(
        self,
        provider: PlanProvider,
        refresh_seconds: float = 1.0,
        accept: Callable[[PlanVersion], object] | None = None,
    ) -> None:
        self.provider = provider
        self.refresh_seconds = refresh_seconds
        self.accept = accept
        self._lock = threading.Lock()
        self._current: PlanVersion | None = None
        self._refused: set[int] = set()
        self._checked_at = 0.0

    def get(self) -> PlanVersion:
        current = self._current
        if current is not None and time.monotonic() - self._checked_at < self.refresh_seconds:
            return current
        # One thread refreshes; the others keep using the plan they have rather than wait.
        if not self._lock.acquire(blocking=current is None):
            assert current is not None
            return current
        try:
            if self._current is not None and time.monotonic() - self._checked_at < self.refresh_seconds:
                return self._current
            try:
                latest = self.provider()
            except SkewlessError:
                if self._current is None:
                    raise
                logger.warning(
                    "could not refresh the plan; serving plan version %s", self._current.version, exc_info=True
                )
                latest = self._current
            if self._current is None or latest.version != self._current.version:
                accepted = self._accepted(latest)  # the current version again when latest is refused
                if accepted is not self._current:
                    logger.info("serving plan version %s", accepted.version)
                    self._current = accepted
            self._checked_at = time.monotonic()
            return self._current
        finally:
            self._lock.release()

    def _accepted(self, latest: PlanVersion) -> PlanVersion:
        """``latest`` when ``accept`` takes it; else the current version (the first version must be taken)."""
        if self.accept is None:
            return latest
        if latest.version in self._refused and self._current is not None:
            return self._current
        try:
            self.accept(latest)
        except SkewlessError as exc:
            if self._current is None:
                raise
            self._refused.add(latest.version)
            logger.error(
                "not serving plan version %s, still serving version %s: %s", latest.version, self._current.version, exc
            )
            return self._current
        return latest


# -- the app --------------------------------------------------------------------------------------------------


class ServingApp(FastAPI):
    """FastAPI behind the gate (:mod:`serving_api.guard`: request id, token, content type, body size, all before
    any route), with ``POST /v1/features`` answered before FastAPI's middleware stack and router.

    The stack it skips (telemetry check, error and exception middleware, exit stack, route matching, a
    ``Request`` object) cost ~100 µs of a ~350 µs in-process lookup. The lookup catches its own errors, so
    nothing is lost. Anything else, and every request once middleware is added, OpenTelemetry is on or a
    ``root_path`` is set, goes the ordinary way, with the caller's grant in ``scope[GRANT]`` and the body the
    gate read.
    """

    answer_lookup: LookupHandler | None = None  # see lookup_handler
    gate = Gate(Authenticator({}), DEFAULT_MAX_BODY_BYTES)
    metrics: ServiceMetrics | None = None  # counts and times every request (serving.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (the app has no websocket route)
            await super().__call__(scope, receive, send)
            return
        metrics = self.metrics
        if metrics is None:
            await self._answer(scope, receive, send)
            return
        # Every answer counted and timed here, refusals of the gate included (see serving_api.metrics). _answer
        # says which status it sent: wrapping `send` to see it (a closure and an await more per message) cost
        # more than the counting itself.
        began = time.perf_counter()
        SERVICE.set("")  # each request runs in a task of its own, with its own copy of the context
        status = 500  # when _answer raises
        try:
            status = await self._answer(scope, receive, send)
        finally:
            if status:  # 0: the client went away before an answer
                metrics.answered(_path(scope), status, time.perf_counter() - began)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer the request; the status sent (0 when the client went away before an answer)."""
        admitted = await self.gate.admit(scope, receive, send)
        if isinstance(admitted, int):  # answered already (refused), or the client went away (0)
            return admitted
        if (
            self.answer_lookup is not None
            and admitted.body is not None
            and admitted.path == LOOKUP_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and not self.user_middleware
        ):
            answer = await self.answer_lookup(admitted.body, admitted.grant)
            await send_json(send, answer)
            return answer[0]
        scope[GRANT] = admitted.grant
        if admitted.body is not None:
            receive = replay(admitted.body, receive)
        sent = TaggedSend(send)
        await super().__call__(scope, receive, sent)
        return sent.status


def create_app(
    repo_path: str | os.PathLike[str] | None = None,
    *,
    plan_provider: PlanProvider | None = None,
    store: OnlineStore | None = None,
    refresh_seconds: float = 1.0,
    max_entities: int | None = None,
    function_loader: FunctionLoader | None = None,
    freeze_startup_objects: bool = False,
    opentelemetry: bool = False,
    tokens: Mapping[str, Mapping[str, Any]] | None = None,
    max_body_bytes: int | None = None,
    max_request_fields: int | None = None,
    served_log: ServedLog | None = None,
    metrics: bool | None = None,
) -> FastAPI:
    """The service for a feature repository (``repo_path``), or for a plan provider and a store (tests, or
    embedding the service in another app). A request may ask for at most ``max_entities`` entities and name at
    most ``max_request_fields`` columns, so one request cannot hold the online store for long, in a body of at
    most ``max_body_bytes``; ``tokens`` (``serving.tokens`` entries, see :mod:`serving_api.auth`) turn on
    authentication. Each of these four defaults to the repository's ``serving:`` setting (with a plan provider:
    to the settings' defaults, no tokens). ``served_log`` logs a sample of the answered lookups
    (:mod:`serving_api.served_log`); default: the repository's ``serving.log`` (none with a plan provider).
    ``function_loader`` imports the plan's on-demand functions (default: from the repository's definitions
    folder, or by plain import with a plan provider).
    ``freeze_startup_objects`` moves what exists once the plan is loaded out of the garbage collector's sight
    (:func:`gc.freeze`, process-wide: ``skewless serve`` sets it), so a full collection walks only what requests
    allocate: without it one took ~130 ms in the middle of a request. ``opentelemetry`` turns on FastAPI's
    native OpenTelemetry spans and metrics for every request, through the globally configured providers (off
    by default: checking for providers alone cost ~20 µs per request). ``metrics`` serves ``GET /metrics``
    (:mod:`serving_api.metrics`; default: the repository's ``serving.metrics``, on with a plan provider).

    >>> app = create_app("path/to/repo")                                    # doctest: +SKIP
    >>> app = create_app(plan_provider=registry.latest, store=RedisOnlineStore(url))  # doctest: +SKIP
    """
    owned, plan_provider, store, loader = _backends(repo_path, plan_provider, store, function_loader)
    config = owned.config if owned is not None else None
    if tokens is None:
        tokens = config.resolved_serving_tokens() if config is not None else {}
    max_entities = max_entities or (config.max_entities if config else DEFAULT_MAX_ENTITIES)
    max_fields = max_request_fields or (config.max_request_fields if config else DEFAULT_MAX_REQUEST_FIELDS)
    max_body_bytes = max_body_bytes or (config.max_body_bytes if config else DEFAULT_MAX_BODY_BYTES)
    if served_log is None and config is not None:
        served_log = ServedLog.from_config(config)
    if metrics is None:
        metrics = config.metrics if config else True
    plans = _plan_cache(plan_provider, loader, refresh_seconds)
    app = ServingApp(
        title="skewless feature serving",
        version="1",
        lifespan=_lifespan(plans, owned, freeze_startup_objects, served_log),
        description="Online feature lookups: the values a model trained on, served.",
        telemetry={"tracing": opentelemetry, "metrics": opentelemetry, "logs": opentelemetry},
    )
    app.gate = Gate(Authenticator(tokens), max_body_bytes)
    app.state.plans = plans
    app.state.store = store
    app.state.functions = loader
    app.state.served_log = served_log  # its counters, for /metrics; None when the log is off
    _add_error_handlers(app)
    caps = Caps(max_entities, max_fields)
    contracts = (
        ContractCache(
            owned.registry.contracts,
            refresh_seconds,
            plan_of=lambda v: owned.registry.get(v).plan,
            online=store,
            function_kept=lambda fingerprint: owned.registry.function_source(fingerprint) is not None,
        )
        if owned is not None
        else None
    )
    counted = _add_metrics_route(app, plans, store) if metrics else None
    if counted is not None and served_log is not None:
        log = served_log
        counted.register_counters(
            "served_log",
            lambda: {
                "offered": log.offered,
                "sampled_out": log.sampled_out,
                "dropped": log.dropped,
                "written": log.written,
                "failed": log.failed,
            },
            "lookups offered to the served-feature log, by what became of them (dropped: the queue was full)",
        )
    answer_lookup = lookup_handler(
        plans, store, loader, caps, contracts=contracts, served_log=served_log, metrics=counted
    )
    if not opentelemetry:
        app.answer_lookup = answer_lookup  # the fast path (see ServingApp); OpenTelemetry needs the routed way
    _add_lookup_routes(app, answer_lookup)
    _add_health_route(app, plans, store)
    feast_lookup = lookup_handler(plans, store, loader, caps, FEAST, served_log=served_log, metrics=counted)
    add_feast_door(app, lookup_endpoint(feast_lookup), LOOKUP_ERRORS)
    if owned is not None:  # served from a repository: its catalog, and pushes (they write to its offline path)
        from serving_api.catalog_ui import create_catalog_app
        from serving_api.push import add_push_route

        app.mount("/ui", create_catalog_app(owned), name="ui")
        add_push_route(app, owned, caps)
    _document_security(app, bool(tokens))
    return app


def _backends(
    repo_path: str | os.PathLike[str] | None,
    plan_provider: PlanProvider | None,
    store: OnlineStore | None,
    function_loader: FunctionLoader | None,
) -> tuple[FeatureStore | None, PlanProvider, OnlineStore, FunctionLoader]:
    """What the app serves from: the repository's store, registry and functions (the :class:`FeatureStore`
    opened here is returned too: the app owns it and closes it), or the given plan provider and store."""
    owned = None
    if repo_path is not None:
        if plan_provider is not None or store is not None:
            raise TypeError("give either repo_path or plan_provider and store, not both")
        from features.store import FeatureStore

        owned = FeatureStore(repo_path)
        plan_provider = owned.plan_version
        store = owned.online_store()
        function_loader = function_loader or owned.function_loader
    if plan_provider is None or store is None:
        raise TypeError("create_app needs repo_path, or both plan_provider and store")
    return owned, plan_provider, store, function_loader or FunctionLoader()


def _plan_cache(plan_provider: PlanProvider, loader: FunctionLoader, refresh_seconds: float) -> PlanCache:
    """The app's plan cache: a new plan version is served only once ``loader`` has loaded its on-demand functions."""
    return PlanCache(plan_provider, refresh_seconds, accept=lambda version: loader.functions_for(version.plan))


def _lifespan(
    plans: PlanCache, owned: FeatureStore | None, freeze_startup_objects: bool, served_log: ServedLog | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Startup and shutdown: load the plan (and its functions) before serving, freeze the startup objects when
    asked, start the served-feature log's flusher; at the end flush the log, close the repository's store
    (``owned``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Code that differs from the applied plan must not start serving; an unreachable registry or an
        # empty one is reported per request (503), as before.
        try:
            plans.get()
        except FunctionLoadError:
            logger.error("cannot start serving: the on-demand functions do not match the applied plan")
            if owned is not None:
                owned.close()
            raise
        except SkewlessError as exc:
            logger.warning("no plan to serve yet: %s", exc)
        if served_log is not None:
            _check_logged_services(plans, served_log)
            await served_log.start()
        if freeze_startup_objects:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if served_log is not None:
                await served_log.stop()  # what is still queued is written before the worker exits
            if owned is not None:
                owned.close()

    return lifespan


def _check_logged_services(plans: PlanCache, served_log: ServedLog) -> None:
    """Warn about ``serving.log.services`` naming services the plan does not have (not fatal: the plan may gain
    them later, and the other lookups are still logged)."""
    try:
        known = [service.name for service in plans.get().plan.services]
    except SkewlessError:
        return
    unknown = served_log.unknown_services(known)
    if unknown:
        logger.warning(
            "serving.log.services names feature service(s) the plan does not have: %s; known: %s",
            ", ".join(unknown),
            ", ".join(sorted(known)) or "(none)",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Errors of the routed way as :class:`ErrorAnswer` JSON: a body FastAPI rejects (malformed JSON too) is 422,
    an unknown path or method 404 or 405, anything unexpected 500 without a traceback (the lookup handler answers
    its own errors; these cover the other routes)."""

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        return _invalid(exc.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # FastAPI answers a body it cannot parse as JSON 400; the lookups answer it 422, and so does every route.
        if exc.status_code == 400:
            return _error(422, "RequestValidationError", "invalid request: the body is not valid JSON")
        answer = _error(exc.status_code, type(exc).__name__, str(exc.detail))
        answer.headers.update(exc.headers or {})
        return answer

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return _unexpected(exc)


class LookupDialect(Protocol):
    """How a lookup request reads and its answer is written: skewless's own (:data:`NATIVE`), or another
    feature store's (Feast's, :mod:`serving_api.feast_door`). Every dialect runs the same lookup."""

    def parse(self, raw_body: bytes) -> Any:
        """The request (with ``features``, ``feature_service`` and ``entities``); a pydantic ValidationError
        when malformed."""

    def inputs(self, request: Any, lookup: Lookup) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        """The entity columns and the request data the lookup needs, from the request."""

    def answer(self, request: Any, lookup: Lookup, result: LookupResult) -> bytes:
        """The answer's JSON body."""


class NativeDialect:
    """``POST /v1/features``: :class:`FeaturesRequest` in, :meth:`LookupResult.to_dict` out."""

    def parse(self, raw_body: bytes) -> FeaturesRequest:
        # pydantic-core checks the bytes as fast as orjson.loads and the same checks in Python (measured: 2.3
        # against 2.5 µs for one entity, 4.8 against 6.2 for 100): no parse of our own.
        return FeaturesRequest.model_validate_json(raw_body)

    def inputs(self, request: FeaturesRequest, lookup: Lookup) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        return request.entities, request.request_data

    def answer(self, request: FeaturesRequest, lookup: Lookup, result: LookupResult) -> bytes:
        return result.to_json()


NATIVE = NativeDialect()


@dataclass(frozen=True, slots=True)
class Caps:
    """How much one request may ask: values per column (entities of a lookup, rows of a push), and columns
    (entity keys plus request-data fields of a lookup, source columns of a push)."""

    max_entities: int = DEFAULT_MAX_ENTITIES
    max_fields: int = DEFAULT_MAX_REQUEST_FIELDS

    def check(self, columns: Mapping[str, Any], what: str = "entities") -> None:
        """Raise :class:`BadRequestError` when ``columns`` (name -> a list, or one value) ask for too much."""
        if len(columns) > self.max_fields:
            raise BadRequestError(
                f"too many columns: {len(columns)}; at most {self.max_fields} per request (serving.max_request_fields)"
            )
        count = max((len(v) for v in columns.values() if isinstance(v, list)), default=0)
        if count > self.max_entities:
            raise BadRequestError(
                f"too many {what}: {count}; at most {self.max_entities} per request (split the request)"
            )


def lookup_handler(
    plans: PlanCache,
    store: OnlineStore,
    loader: FunctionLoader,
    caps: Caps,
    dialect: LookupDialect = NATIVE,
    *,
    contracts: ContractCache | None = None,
    served_log: ServedLog | None = None,
    metrics: ServiceMetrics | None = None,
) -> LookupHandler:
    """The one handler of lookups: the answer to a request body for a caller's grant, never raising (errors
    become their HTTP statuses). :meth:`ServingApp.__call__` (the fast path) calls it with the body it read, the
    routed way through :func:`lookup_endpoint`. ``dialect`` reads the request and writes the answer:
    ``POST /v1/features`` speaks :data:`NATIVE`, ``POST /get-online-features`` Feast's
    (:mod:`serving_api.feast_door`). The request data counts in ``caps`` as the entity columns do. ``contracts``
    are the training contracts a request may name (none: every contract is unknown). Answered lookups (200 only:
    an error has no values to audit) are offered to ``served_log``, whatever the dialect; ``metrics`` counts the
    statuses served per view."""

    async def answer_lookup(raw_body: bytes, grant: Grant) -> Answer:
        # On the event loop: the Redis read is awaited on the worker's one pipelined connection (a store without
        # read_async blocks the loop for its round trip instead: a thread-pool hop per request cost ~1 ms, more
        # than it buys). The body is parsed and checked by pydantic straight from the bytes (FastAPI's own body
        # handling costs ~0.1 ms more).
        try:
            body = dialect.parse(raw_body)
        except ValidationError as exc:
            return answer_of(_invalid(exc.errors()))
        service = body.feature_service if body.features is None else None
        if not grant.may_look_up(service):
            return answer_of(_forbidden(grant, service))
        try:
            caps.check({**body.entities, **(getattr(body, "request_data", None) or {})})
            version = plans.get()
            plan = version.plan
            contract = getattr(body, "contract", None)
            if contract is None:
                lookup = _prepare(plan, body.features, body.feature_service)
            else:
                plan, refs = _contract_selection(
                    contracts, plan, version.version, contract, body.features, body.feature_service
                )
                lookup = _prepare(plan, refs, None)
            SERVICE.set(service or "features")  # a known service now: a label of the request's metrics
            entities, request_data = dialect.inputs(body, lookup)
            result = await lookup.run_async(
                store,
                entities,
                plan_version=version.version,
                request_data=request_data,
                # Under a contract's earlier plan its functions run as they were applied (features.functions).
                functions=loader.functions_for(plan, applied=plan is not version.plan)
                if plan.on_demand_views
                else None,
            )
            if metrics is not None:
                metrics.served(result)
            answer = dialect.answer(body, lookup, result)
        except Exception as exc:
            return answer_of(_error_answer(exc))
        # A lookup under a contract served side by side (another plan than the live one) is not logged: the audit
        # compares with the live definitions.
        if served_log is not None and plan is version.plan:
            body_bytes = answer if dialect is NATIVE else None  # Feast's answer: the log encodes its own
            served_log.offer(REQUEST_ID.get(), service, result, request_data, body_bytes)
        return 200, answer

    return answer_lookup


def lookup_endpoint(answer_lookup: LookupHandler) -> Callable[[Request], Awaitable[Response]]:
    """``answer_lookup`` as a route endpoint: it reads the request's body and hands it over."""

    async def get_features(request: Request) -> Response:
        """The latest published values of the features for each entity, with statuses and event times.
        \f
        (FastAPI shows the docstring up to the form feed above in /docs.) The endpoint of the plain Starlette
        route of ``POST /v1/features``, and the same function declared on the FastAPI route of that path, which
        only documents it (/docs, /openapi.json) and never answers: the Starlette route comes first and matches
        every request the FastAPI route would.
        """
        return json_response(await answer_lookup(await request.body(), request.scope[GRANT]))

    return get_features


def _add_lookup_routes(app: FastAPI, answer_lookup: LookupHandler) -> None:
    """The routed way to ``POST /v1/features``, taken when the fast path is not (middleware added, a
    ``root_path`` set, OpenTelemetry on), and its documentation.

    A plain Starlette route, put first of all routes so it matches first (each route tried costs a regex match):
    FastAPI's per-request dependency machinery, which this endpoint does not use (it parses its body itself),
    cost ~50 µs of a ~350 µs lookup. The FastAPI route of the same path, with the same endpoint function, only
    documents it; the request model is not a route parameter, so its schema is added to the OpenAPI document.
    """
    get_features = lookup_endpoint(answer_lookup)
    app.router.routes.insert(0, Route(LOOKUP_PATH, get_features, methods=["POST"]))
    app.post(
        LOOKUP_PATH,
        response_class=JSONAnswer,
        summary="Look up online feature values",
        responses={200: {"model": FeaturesAnswer}, **LOOKUP_ERRORS},
        openapi_extra={"requestBody": _REQUEST_BODY},
    )(get_features)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["FeaturesRequest"] = (
                FeaturesRequest.model_json_schema()
            )
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_health_route(app: FastAPI, plans: PlanCache, store: OnlineStore) -> None:
    """``GET /health``."""

    @app.get(
        "/health",
        response_class=JSONAnswer,
        responses={200: {"model": HealthAnswer}, 503: {"model": HealthAnswer}, 500: {"model": ErrorAnswer}},
    )
    def health() -> Response:
        """200 when the online store answers and a plan is applied; 503 otherwise (with a safe message: the
        details, redacted, are in the server's log under the request id). Open without a token."""
        try:
            version = plans.get()
            store.ping()
        except SkewlessError as exc:
            request_id = REQUEST_ID.get()
            logger.warning("request %s: health check failed: %s", request_id, redact_text(str(exc)))
            body = {"status": "unavailable", "error": _safe_message(exc), "request_id": request_id}
            return JSONAnswer(body, status_code=503)
        except Exception as exc:
            return _unexpected(exc)
        return JSONAnswer({"status": "ok", "plan_version": version.version})


def _add_metrics_route(app: ServingApp, plans: PlanCache, store: OnlineStore) -> ServiceMetrics:
    """``GET /metrics`` (:mod:`serving_api.metrics`), and the app counting every request. It takes a token when
    tokens are configured (any of them): its labels name the views and services, and their traffic."""
    metrics = app.metrics = service_metrics()
    ages = snapshot_ages(plans.get, store)

    @app.get(METRICS_PATH, include_in_schema=False)
    def prometheus_metrics() -> Response:
        # A plain def: FastAPI runs it in a thread, so the pointer reads of the snapshot ages block no request.
        return Response(metrics.exposition(ages), media_type=CONTENT_TYPE)

    return metrics


def _path(scope: Scope) -> str:
    """The request's path below any ``root_path``."""
    path: str = scope["path"]
    root = scope.get("root_path")
    return path[len(root) :] if root and path.startswith(root) else path


_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeaturesRequest"}}},
}


def app_from_env() -> FastAPI:
    """The app for the repository named by ``$SKEWLESS_REPO`` (default: the current folder), with OpenTelemetry
    when ``$SKEWLESS_OPENTELEMETRY`` is ``1``; uvicorn factory."""
    return create_app(
        os.environ.get(ENV_REPO, "."),
        freeze_startup_objects=True,
        opentelemetry=os.environ.get(ENV_OPENTELEMETRY) == "1",
    )


def _functions(loader: FunctionLoader, plan: Plan, live: Plan) -> dict[str, Callable[..., Any]] | None:
    """The on-demand functions of the plan a lookup runs; under a contract's earlier plan (not the live one) its
    functions run as they were applied (:meth:`FunctionLoader.functions_for`)."""
    return loader.functions_for(plan, applied=plan is not live) if plan.on_demand_views else None


def _contract_selection(
    contracts: ContractCache | None,
    plan: Plan,
    version: int,
    name: str,
    features: list[str] | None,
    feature_service: str | None,
) -> tuple[Plan, list[str]]:
    """The plan and references a lookup under the contract ``name`` reads (see :func:`features.contracts.select`)."""
    if contracts is None:
        raise UnknownNameError("contract", name, [])
    return contracts.selection(plan, version, name, features=features, feature_service=feature_service)


def _prepare(plan: Plan, features: list[str] | None, feature_service: str | None) -> Lookup:
    try:
        return prepare(plan, features=features, feature_service=feature_service)
    except SkewlessError:
        raise
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc


def _error_answer(exc: Exception) -> Response:
    if isinstance(exc, OnDemandFunctionError):
        # The user's code failed: say which view and function, log the traceback, never send it.
        logger.error("on-demand function %s of view %s failed", exc.function, exc.view, exc_info=exc)
        return JSONAnswer(exc.to_dict(), status_code=500)
    if isinstance(exc, UnknownNameError):
        return _error(404, type(exc).__name__, str(exc), known=exc.known, kind=exc.kind, name=exc.name)
    if isinstance(exc, ContractConflictError):
        return _error(
            409,
            type(exc).__name__,
            str(exc),
            contract=exc.contract,
            changed=exc.changed,
            contract_plan_version=exc.contract_plan_version,
            live_plan_version=exc.live_plan_version,
        )
    if isinstance(exc, OfflineOnlyViewError):
        return _error(422, type(exc).__name__, str(exc), known=exc.online_views)
    if isinstance(exc, EntityKeyError | BadRequestError) or (
        isinstance(exc, SkewlessError) and isinstance(exc, ValueError)
    ):
        return _error(422, type(exc).__name__, str(exc))
    if isinstance(exc, OnlineStoreError | RegistryError):
        if isinstance(exc, OnlineStoreError):
            record_store_error(exc)
        _unavailable_log.warning("request %s: lookup failed: %s", REQUEST_ID.get(), redact_text(str(exc)))
        return _error(503, type(exc).__name__, _safe_message(exc))
    return _unexpected(exc)


def _safe_message(exc: SkewlessError) -> str:
    """What a 503 tells the caller: the kind of outage, no URL, host or driver message (those go to the log)."""
    if isinstance(exc, OnlineStoreError):
        what = "the online store cannot be reached or did not answer in time"
    else:
        what = "no plan to serve: the registry cannot be read, or no plan was applied yet ('skewless apply')"
    return f"{what}; the server's log has the details under request id {REQUEST_ID.get()}"


def _forbidden(grant: Grant, service: str | None) -> Response:
    asked = f"feature service '{service}'" if service is not None else "a plain features list (that takes '*')"
    allowed = ", ".join(sorted(grant.services)) or "(none)"
    message = f"token '{grant.name}' may not look up {asked}; it may look up: {allowed}"
    return _error(403, "PermissionError", message)


def _invalid(errors: Any) -> Response:
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors
    ]
    return _error(422, "RequestValidationError", "invalid request: " + "; ".join(problems))


def _unexpected(exc: Exception) -> Response:
    request_id = REQUEST_ID.get()
    details = redact_text("".join(traceback.format_exception(exc)))
    logger.error("request %s: unexpected error while serving it\n%s", request_id, details)
    return _error(500, type(exc).__name__, f"internal error; the server's log has it under request id {request_id}")


_error = error  # the error answer of every route (serving_api.answers: bounded, with the request id)
LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer, "description": meaning}
    for status, meaning in (
        (401, "no token, or a token that is not configured"),
        (403, "the token may not look up this feature service (or a plain features list)"),
        (404, "unknown feature, view, feature service or training contract"),
        (409, "a feature's definition changed since the named training contract (the changed ones are listed)"),
        (413, "the body is larger than serving.max_body_bytes"),
        (415, "the body is not application/json"),
        (422, "malformed request, wrong entity keys or request data, too many entities or columns"),
        (500, "an on-demand function failed, or an unexpected error (no traceback)"),
        (503, "the online store or the registry cannot be reached"),
    )
}


def _document_security(app: FastAPI, authenticated: bool) -> None:
    """Say in the OpenAPI document that every operation but ``/health`` takes a bearer token (when it does)."""
    if not authenticated:
        return
    documented = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = documented()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    if path != "/health":
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
