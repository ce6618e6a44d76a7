"""The error hierarchy: one root, and subclasses that also inherit the matching built-in.

Every error skewless raises on purpose derives from :class:`SkewlessError`, so callers can catch the whole
family at once, and from the built-in that describes its kind (``ValueError`` for bad input, ``LookupError``
for unknown names), so generic handlers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class SkewlessError(Exception):
    """Root of every error raised by skewless."""


class DefinitionError(SkewlessError, ValueError):
    """A feature definition is invalid. The message names the file, the line and the valid choices."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class ConfigError(SkewlessError, ValueError):
    """The repository configuration (``skewless.yaml``) is invalid or incomplete."""


class RegistryError(SkewlessError, RuntimeError):
    """The registry database could not be read or written."""


class UnknownNameError(SkewlessError, LookupError):
    """A feature, view or service name that the plan does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, context: str = "") -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        where = f" {context}" if context else ""
        choices = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"unknown {kind} '{name}'{where}; known: {choices}")


class SchemaMismatchError(SkewlessError, ValueError):
    """A source's columns or types no longer match the applied plan."""


class MaterializationError(SkewlessError, RuntimeError):
    """A materialization run failed; the stores were left as they were before the run."""


class ChecksFailedError(MaterializationError):
    """A run's rows failed a blocking check: the run was neither committed to Delta nor published online, and the
    previous values stay served. ``reports`` maps each view that failed to its
    :class:`features.checks.CheckReport` (the failing checks, with counts and example rows)."""

    def __init__(self, message: str, reports: dict[str, Any]) -> None:
        self.reports = reports
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole by the warm engine
        return (type(self), (str(self), self.reports))


class OnlineStoreError(SkewlessError, ConnectionError):
    """The online store could not be reached or answered with an error."""


class EntityKeyError(SkewlessError, ValueError):
    """Entity keys given for a lookup are missing or of the wrong type."""


# -- Definitions and the plan -----------------------------------------------------------------------------------------


class ExpressionError(SkewlessError, ValueError):
    """An expression is invalid; ``fragment`` is the offending part of the text."""

    def __init__(self, message: str, fragment: str) -> None:
        self.fragment = fragment
        super().__init__(f"{message} (in `{fragment}`)")


class PlanError(SkewlessError, ValueError):
    """A plan node was used in a way its kind does not allow (an internal misuse, not a user error)."""


class UnsupportedExpressionError(SkewlessError, NotImplementedError):
    """A plan expression node, operator or cast that an engine has no rule for.

    One class for both engines: ``offline.spark.translate`` raises it too, so callers catch one error.
    """


class FunctionLoadError(SkewlessError, RuntimeError):
    """An on-demand function named by the plan cannot be imported, or its source changed since the plan."""


class SourceUnavailableError(SkewlessError, ConnectionError):
    """A source database could not be read while compiling the plan."""


# -- Online lookups and request-time features -------------------------------------------------------------------------


class OfflineOnlyViewError(SkewlessError, LookupError):
    """A lookup asked for a feature of a view that is not published online (``online=False``)."""

    def __init__(self, view: str, online_views: Sequence[str]) -> None:
        self.view = view
        self.online_views = sorted(online_views)
        choices = ", ".join(self.online_views) or "(none)"
        super().__init__(
            f"feature view '{view}' is offline-only (online=False) and cannot be looked up; "
            f"views served online: {choices}"
        )


class RequestDataError(SkewlessError, ValueError):
    """``request_data`` lacks a field an on-demand feature needs, or holds a value of the wrong type."""


class FeatureEvaluationError(SkewlessError, ValueError):
    """An on-demand feature could not be computed for the given values."""


class OnDemandFunctionError(SkewlessError, RuntimeError):
    """A plain-Python on-demand function raised, or returned something that is not its declared outputs.

    ``view`` and ``function`` (``module:qualname``) say which; ``exception`` is the type name of what the
    function raised (or of the conversion that failed); ``output`` names the output at fault, when one is.
    Serving answers it with HTTP 500 and these fields, never with a traceback.
    """

    def __init__(self, message: str, *, view: str, function: str, exception: str, output: str | None = None) -> None:
        self.view = view
        self.function = function
        self.exception = exception
        self.output = output
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        data = {"error": str(self), "type": type(self).__name__, "view": self.view, "function": self.function,
                "exception": self.exception}  # fmt: skip
        if self.output is not None:
            data["output"] = self.output
        return data


class PushError(SkewlessError, ValueError):
    """Rows pushed to a view do not fit it (a missing, extra or mistyped column, a duplicate row), or the view
    cannot take pushes (windowed aggregations, a float key). Nothing of the push was written."""


class PushConflictError(SkewlessError, RuntimeError):
    """The online store serves a view from another definition than the plan's (changed since the last
    materialization): a push encoded for the plan could not be read there. Materialize the view, then push.
    Nothing of the push was written."""


# -- Offline jobs -----------------------------------------------------------------------------------------------------


class DatasetError(SkewlessError, ValueError):
    """A training set cannot be built or reproduced as asked."""


class OnDemandInputError(SkewlessError, ValueError):
    """The entity rows lack a request field an on-demand feature needs."""


class EngineError(SkewlessError, RuntimeError):
    """The warm engine could not be started, reached, or failed in a way that has no skewless error."""


class JavaNotFoundError(SkewlessError, RuntimeError):
    """No Java 17+ runtime is available to start Spark."""


class SparkClusterError(SkewlessError, ConnectionError):
    """The Spark master of ``spark.master`` did not answer, or the session could not register with it."""


class UnsupportedTableError(SkewlessError, NotImplementedError):
    """A Delta table (or the asked version) needs a reader feature the Python log reader does not implement.

    Engines ask it in their refusal: such a table is read by Spark, which reads every Delta table."""


class CommitConflictError(SkewlessError, RuntimeError):
    """Another writer committed the version this commit was for: nothing of this commit is visible. Run the
    job again: it starts from the table as the other writer left it."""


# -- The HTTP service and its client ----------------------------------------------------------------------------------


class BadRequestError(SkewlessError, ValueError):
    """The request is well-formed JSON but asks for something malformed (e.g. a reference without ':')."""


class InvalidRequestError(SkewlessError, ValueError):
    """The service refused the request as malformed (HTTP 422)."""


class RequestTooLargeError(SkewlessError, ValueError):
    """A request body larger than ``serving.max_body_bytes`` (HTTP 413): raised while it is read, before the rest."""


class AccessDeniedError(SkewlessError, PermissionError):
    """The service refused the caller: no valid token (HTTP 401), or a token without the scope (HTTP 403)."""


class ServiceUnavailableError(SkewlessError, ConnectionError):
    """The service, or the online store behind it, cannot answer now (HTTP 503, or no connection)."""


class ServerError(SkewlessError, RuntimeError):
    """The service failed unexpectedly (HTTP 500 or another status)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A short 'valid choices' suffix for error messages."""
    choices = sorted(known)
    return f"; valid choices: {', '.join(choices)}" if choices else ""


# -- Cleaning up -------------------------------------------------------------------------------------------------------


class CleanupError(SkewlessError, RuntimeError):
    """``skewless prune`` or ``teardown`` refused to start, or stopped part way (the message says what it had
    deleted; everything else is as it was)."""


class StatsError(SkewlessError, LookupError):
    """The statistics asked for do not exist: a view without runs with statistics, a run number out of range, a
    training-set manifest without statistics."""


class ContractError(SkewlessError, ValueError):
    """A training contract that cannot be registered or retired: a manifest of another repository, a tampered
    fingerprint, a name taken by another contract."""


class ContractConflictError(SkewlessError, RuntimeError):
    """A lookup under a training contract asked for features whose live definition is not the contracted one
    (HTTP 409): never served with another definition's values."""

    def __init__(self, contract: str, contract_plan_version: int, live_plan_version: int | None, changed: list[str]):
        self.contract = contract
        self.contract_plan_version = contract_plan_version
        self.live_plan_version = live_plan_version
        self.changed = changed
        super().__init__(
            f"contract '{contract}' was trained on plan version {contract_plan_version}; the definitions of "
            f"{', '.join(changed)} changed since (live plan version {live_plan_version}) and their contracted "
            "versions are not served: retrain and register a new contract, or apply the contracted definitions"
        )


class AuditInputError(SkewlessError, ValueError):
    """``skewless audit`` cannot run on what it was given: no log, a plan version the registry does not know,
    an unknown service or view, a ``--since`` in the future."""
