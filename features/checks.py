"""Declared checks of a view's data, and the gate that evaluates them before a run may commit and publish.

Checks are written with the definitions, on the feature they test or on the view::

    merchant_risk = FeatureView(
        ...,
        features=[
            Feature("chargeback_rate", Float64, checks=[Range(0, 1), MaxNulls(0.01)]),
            Feature("category", String, checks=[AllowedValues(["grocery", "travel"], level="warning")]),
        ],
        checks=[RowCount(min=10), UniqueKeys(), Drift(against="fraud_model_v7", feature="chargeback_rate")],
    )

Each check is ``level="blocking"`` (the default: a run whose rows fail it is neither committed to Delta nor
published online) or ``level="warning"`` (the run publishes, and reports it). Checks compile into the plan
(:class:`CheckPlan`): they change the plan's fingerprint (a new plan version carries the new checks) but never a
feature's or the table's fingerprint (they change no stored value).

What each check reads (docs/ARCHITECTURE.md, "Checks and the gate"): the statistics of the rows the run writes
(:mod:`features.run_stats`, computed in the same pass as the write), the number of source rows it read, and for
the failing rows' count and examples the rows the engine already holds (:class:`RunRows`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from features import drift
from features.definitions import SourceLocation, _location
from features.dtypes import DType
from features.errors import ChecksFailedError, DefinitionError
from features.run_stats import TOP_VALUES, FeatureStats

if TYPE_CHECKING:
    import pyarrow as pa

    from features.plan import ViewPlan

log = logging.getLogger(__name__)

__all__ = [
    "LEVELS",
    "AllowedValues",
    "Check",
    "CheckOutcome",
    "CheckPlan",
    "CheckReport",
    "Drift",
    "MaxNulls",
    "Range",
    "RowCount",
    "UniqueKeys",
]

LEVELS = ("blocking", "warning")
PREVIOUS = "previous"  # Drift(against=...): the view's previous successful run
EXAMPLES = 5  # failing rows kept as examples per check


def _check_level(level: object, location: SourceLocation) -> None:
    if level not in LEVELS:
        raise DefinitionError(
            f"unknown check level {level!r}; valid choices: {', '.join(LEVELS)}", location=str(location)
        )


def _check_feature(feature: object, location: SourceLocation) -> None:
    if feature is not None and not isinstance(feature, str):
        raise DefinitionError(f"feature= must be a feature name, got {feature!r}", location=str(location))


def _number(value: object, what: str, location: SourceLocation) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise DefinitionError(f"{what} must be a number or None, got {value!r}", location=str(location))
    return float(value) if isinstance(value, float) else value


@dataclass(frozen=True, slots=True)
class Range:
    """Every value is within ``[min, max]`` (either bound may be None). Numeric features only. Nulls and NaN are
    not values (see :class:`MaxNulls`); an infinity is outside any bound on its side."""

    min: float | None = None
    max: float | None = None
    feature: str | None = None
    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        low, high = _number(self.min, "Range min", self.location), _number(self.max, "Range max", self.location)
        if low is None and high is None:
            raise DefinitionError("Range needs min=, max= or both", location=str(self.location))
        if low is not None and high is not None and low > high:
            raise DefinitionError(f"Range min {low} is above max {high}", location=str(self.location))
        _check_feature(self.feature, self.location)
        _check_level(self.level, self.location)


@dataclass(frozen=True, slots=True)
class AllowedValues:
    """Every value is one of ``values`` (strings for a string feature, integers for an int64 one, True/False for
    a bool one). Nulls are not values (see :class:`MaxNulls`)."""

    values: Sequence[str | int | bool]
    feature: str | None = None
    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.values, str) or not isinstance(self.values, Sequence | set | frozenset) or not self.values:
            raise DefinitionError(
                f"AllowedValues needs a non-empty list of values, got {self.values!r}", location=str(self.location)
            )
        object.__setattr__(self, "values", tuple(dict.fromkeys(self.values)))
        _check_feature(self.feature, self.location)
        _check_level(self.level, self.location)


@dataclass(frozen=True, slots=True)
class MaxNulls:
    """At most ``share`` (0 to 1) of the rows a run writes lack a value: null, or NaN for a float feature."""

    share: float
    feature: str | None = None
    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        share = _number(self.share, "MaxNulls share", self.location)
        if share is None or not 0 <= share <= 1:
            raise DefinitionError(
                f"MaxNulls share must be from 0 to 1, got {self.share!r}", location=str(self.location)
            )
        _check_feature(self.feature, self.location)
        _check_level(self.level, self.location)


@dataclass(frozen=True, slots=True)
class RowCount:
    """A run reads between ``min`` and ``max`` source rows (either may be None). On the view."""

    min: int | None = None
    max: int | None = None
    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        for what, value in (("min", self.min), ("max", self.max)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise DefinitionError(
                    f"RowCount {what} must be a whole number >= 0 or None, got {value!r}", location=str(self.location)
                )
        if self.min is None and self.max is None:
            raise DefinitionError("RowCount needs min=, max= or both", location=str(self.location))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise DefinitionError(f"RowCount min {self.min} is above max {self.max}", location=str(self.location))
        _check_level(self.level, self.location)


@dataclass(frozen=True, slots=True)
class UniqueKeys:
    """No two rows a run writes have the same entity keys: for a source that holds one row per entity per batch
    (a daily scoring, a snapshot). On a view without aggregations (a windowed view writes a row per tick)."""

    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_level(self.level, self.location)


@dataclass(frozen=True, slots=True)
class Drift:
    """The distribution of a feature (every feature of the view when ``feature`` is None) stays close to the
    previous run's (``against="previous"``) or to a training set's, named by its registered training contract
    (``against="fraud_model_v7"``: its manifest's statistics). The rules are the default drift rules
    (:mod:`features.drift`); ``tolerance`` scales every threshold (2.0: twice as tolerant)."""

    against: str = PREVIOUS
    feature: str | None = None
    tolerance: float = 1.0
    level: str = "blocking"
    location: SourceLocation = field(default_factory=_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.against, str) or not self.against:
            raise DefinitionError(
                f"Drift against= must be 'previous' or a training contract's name, got {self.against!r}",
                location=str(self.location),
            )
        tolerance = _number(self.tolerance, "Drift tolerance", self.location)
        if tolerance is None or tolerance <= 0 or math.isinf(tolerance):
            raise DefinitionError(
                f"Drift tolerance must be a positive number, got {self.tolerance!r}", location=str(self.location)
            )
        _check_feature(self.feature, self.location)
        _check_level(self.level, self.location)


Check = Range | AllowedValues | MaxNulls | RowCount | UniqueKeys | Drift
CHECK_TYPES = (Range, AllowedValues, MaxNulls, RowCount, UniqueKeys, Drift)
FEATURE_CHECKS = (Range, AllowedValues, MaxNulls, Drift)  # those that may sit on a Feature


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """A check as the plan holds it: its kind (``range``, ``allowed_values``, ``max_nulls``, ``row_count``,
    ``unique_keys``, ``drift``), the feature it tests (None: the view), its parameters and its level."""

    kind: str
    feature: str | None
    params: dict[str, Any]
    level: str
    location: str = ""

    @property
    def label(self) -> str:
        """How tables and messages name it: ``range(chargeback_rate) [0, 1]``."""
        on = f"({self.feature})" if self.feature else ""
        return f"{self.kind}{on}{_describe(self.kind, self.params)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature": self.feature,
            "params": self.params,
            "level": self.level,
            "location": self.location,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckPlan:
        return cls(data["kind"], data["feature"], dict(data["params"]), data["level"], data.get("location", ""))


def _describe(kind: str, params: dict[str, Any]) -> str:
    if kind in ("range", "row_count"):
        low, high = params.get("min"), params.get("max")
        return f" [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if kind == "allowed_values":
        values = list(params["values"])
        return f" in {values[:5]}" + (f" and {len(values) - 5} more" if len(values) > 5 else "")
    if kind == "max_nulls":
        return f" <= {params['share']:.2%}"
    if kind == "drift":
        return f" against {params['against']}" + (f" x{params['tolerance']:g}" if params["tolerance"] != 1.0 else "")
    return ""


def drift_targets(view_checks: Sequence[CheckPlan]) -> set[str]:
    """The contract names a view's drift checks compare with (``previous`` left out)."""
    return {c.params["against"] for c in view_checks if c.kind == "drift" and c.params["against"] != PREVIOUS}


# -- outcomes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """What one check found in one run. ``passed`` False with ``level`` "blocking" stops the run;
    ``failing_rows``: rows that fail it (None where a check is about the whole run); ``examples``: some of them
    (keys, event time and the value), as JSON-able dictionaries. ``default`` marks a default drift rule."""

    check: str
    level: str
    passed: bool
    observed: str
    failing_rows: int | None = None
    examples: tuple[dict[str, Any], ...] = ()
    default: bool = False

    @property
    def blocks(self) -> bool:
        return not self.passed and self.level == "blocking"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "passed": self.passed,
            "observed": self.observed,
            "failing_rows": self.failing_rows,
            "examples": list(self.examples),
            "default": self.default,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckOutcome:
        return cls(
            data["check"],
            data["level"],
            data["passed"],
            data["observed"],
            data.get("failing_rows"),
            tuple(data.get("examples", ())),
            data.get("default", False),
        )


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every check of one run, and whether they were skipped (``materialize --skip-checks``: evaluated and
    recorded, never blocking)."""

    outcomes: tuple[CheckOutcome, ...] = ()
    skipped: bool = False
    rows_read: int = 0
    #: The statistics the checks read (the rows the run would have written): kept with a blocked run's record.
    written: dict[str, FeatureStats] | None = field(default=None, compare=False)

    @property
    def failed(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.passed)

    @property
    def blocking(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.blocks)

    def to_json(self) -> str:
        return json.dumps({"skipped": self.skipped, "outcomes": [o.to_dict() for o in self.outcomes]}, default=str)

    @classmethod
    def from_json(cls, text: str) -> CheckReport:
        data = json.loads(text)
        return cls(tuple(CheckOutcome.from_dict(o) for o in data["outcomes"]), data.get("skipped", False))


def outcome_rows(outcomes: Sequence[CheckOutcome], view: str | None = None) -> list[tuple[str, ...]]:
    """The table ``materialize`` prints for failed checks: view (when given), check, level, what was seen, rows
    failing, and the first example."""
    rows = []
    for o in outcomes:
        example = json.dumps(o.examples[0], default=str) if o.examples else ""
        failing = "" if o.failing_rows is None else f"{o.failing_rows:,}"
        level = o.level + (" (default)" if o.default else "")
        rows.append(((view,) if view is not None else ()) + (o.check, level, o.observed, failing, example))
    return rows


class RunRows(Protocol):
    """The rows a run is about to write, as the engine holds them: what a check reads beyond the statistics."""

    def failing(self, check: CheckPlan, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """How many rows fail the row-level ``check`` (range, allowed_values, max_nulls), and up to ``limit`` of
        them (keys, event time, the feature's value)."""
        ...

    def duplicate_keys(self, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """How many rows share their entity keys with an earlier row, and up to ``limit`` such keys with counts."""
        ...


# -- evaluation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a run's checks compare it with, gathered before the run starts (plain data: it travels with the job
    to the warm engine). ``previous``: the statistics of the rows the view's last successful run with rows wrote,
    ``previous_rows_read`` the source rows that run read; ``references``: per training contract a drift check
    names, the statistics its manifest recorded (``view__feature`` columns, see :func:`reference_stats`);
    ``skip``: ``materialize --skip-checks`` (checks are evaluated and recorded, but block nothing).

    ``read_kind`` is which source rows the run reads (``offline.incremental.ReadWindow.kind``, ``ticks`` for a
    windowed view), and ``previous_rows_read`` the source rows the last successful run of that same kind read: a
    run after the cursor reads far fewer rows than the first run read, by design, not by drift."""

    previous: dict[str, FeatureStats] | None = None
    read_kind: str | None = None
    previous_rows_read: int | None = None
    previous_run: int | None = None
    references: dict[str, dict[str, FeatureStats]] = field(default_factory=dict)
    skip: bool = False


def reference_stats(view: str, columns: dict[str, FeatureStats]) -> dict[str, FeatureStats]:
    """A training set's statistics (columns ``<view>__<feature>``) as the features of ``view``."""
    prefix = f"{view}__"
    return {name[len(prefix) :]: stats for name, stats in columns.items() if name.startswith(prefix)}


def evaluate(
    view_name: str,
    checks: Sequence[CheckPlan],
    features: dict[str, DType],
    *,
    rows_read: int,
    written: dict[str, FeatureStats],
    rows: RunRows,
    baseline: Baseline,
) -> CheckReport:
    """Every declared check of a run, then the default drift rules against the previous run (as warnings) for
    each feature no declared ``Drift(against="previous")`` covers, and the default volume rule."""
    outcomes = [_declared(view_name, c, features, rows_read, written, rows, baseline) for c in checks]
    covered = {c.feature for c in checks if c.kind == "drift" and c.params["against"] == PREVIOUS}
    if None not in covered and baseline.previous is not None:
        for name in features:
            if name not in covered and name in written and name in baseline.previous:
                default = CheckPlan("drift", name, {"against": PREVIOUS, "tolerance": 1.0}, "warning")
                outcomes.append(_drift_outcome(default, name, written[name], baseline.previous[name], default=True))
    if baseline.previous_rows_read is not None:
        finding = drift.volume_finding(rows_read, baseline.previous_rows_read)
        if finding is not None:
            label = f"drift(rows read) against {PREVIOUS}"
            outcomes.append(CheckOutcome(label, "warning", not finding.fires, finding.describe(), default=True))
    return CheckReport(tuple(outcomes), skipped=baseline.skip, rows_read=rows_read, written=written)


def _declared(
    view_name: str,
    check: CheckPlan,
    features: dict[str, DType],
    rows_read: int,
    written: dict[str, FeatureStats],
    rows: RunRows,
    baseline: Baseline,
) -> CheckOutcome:
    def outcome(passed: bool, observed: str, failing: int | None = None, examples: Sequence[Any] = ()) -> CheckOutcome:
        return CheckOutcome(check.label, check.level, passed, observed, failing, tuple(examples))

    if check.kind == "row_count":
        low, high = check.params["min"], check.params["max"]
        passed = (low is None or rows_read >= low) and (high is None or rows_read <= high)
        return outcome(passed, f"{rows_read:,} source rows read")
    if check.kind == "unique_keys":
        duplicates, examples = rows.duplicate_keys(EXAMPLES) if _rows_written(written) else (0, [])
        return outcome(duplicates == 0, f"{duplicates:,} rows repeat an entity's keys", duplicates, examples)
    if check.kind == "drift":
        return _declared_drift(view_name, check, features, written, baseline)
    assert check.feature is not None  # row-level checks always name a feature (compile_checks)
    stats = written[check.feature]
    if check.kind == "max_nulls":
        missing = stats.nulls + stats.nan
        share = missing / stats.count if stats.count else 0.0
        passed = share <= check.params["share"]
        examples = [] if passed else rows.failing(check, EXAMPLES)[1]
        return outcome(passed, f"{share:.2%} null or NaN ({missing:,} of {stats.count:,})", missing, examples)
    if not _may_fail(check, stats):
        return outcome(True, _seen(check, stats), 0)
    failing, examples = rows.failing(check, EXAMPLES)
    return outcome(failing == 0, _seen(check, stats), failing, examples)


def _rows_written(written: dict[str, FeatureStats]) -> bool:
    return any(s.count for s in written.values())


def _may_fail(check: CheckPlan, stats: FeatureStats) -> bool:
    """Whether the statistics leave room for a failing row (if not, no row is read)."""
    if stats.count == 0:
        return False
    if check.kind == "range":
        low, high = check.params["min"], check.params["max"]
        below = low is not None and (stats.neg_inf > 0 or (stats.min is not None and stats.min < low))
        above = high is not None and (stats.pos_inf > 0 or (stats.max is not None and stats.max > high))
        return below or above
    # allowed values: a complete list of values (fewer than TOP_VALUES recorded) tells without the rows
    if stats.distinct is not None and len(stats.top) < TOP_VALUES:
        allowed = set(check.params["values"])
        return any(value not in allowed for value, _ in stats.top)
    return stats.count > stats.nulls


def _seen(check: CheckPlan, stats: FeatureStats) -> str:
    if check.kind == "range":
        return f"values from {stats.min} to {stats.max}" + (
            f", {stats.pos_inf + stats.neg_inf} infinite" if stats.pos_inf + stats.neg_inf else ""
        )
    shown = ", ".join(f"{v!r}" for v, _ in stats.top[:5])
    return f"{stats.distinct} distinct values ({shown})" if stats.distinct is not None else "values checked row by row"


def _declared_drift(
    view_name: str, check: CheckPlan, features: dict[str, DType], written: dict[str, FeatureStats], baseline: Baseline
) -> CheckOutcome:
    against = check.params["against"]
    base = baseline.previous if against == PREVIOUS else baseline.references.get(against)
    names = (
        [check.feature] if check.feature is not None else [n for n, t in features.items() if t is not DType.TIMESTAMP]
    )
    if base is None:
        why = "no previous run with rows" if against == PREVIOUS else f"training contract '{against}' has no statistics"
        return CheckOutcome(check.label, check.level, True, f"not compared: {why}")
    outcomes = [
        _drift_outcome(check, name, written[name], base[name]) for name in names if name in written and name in base
    ]
    if not outcomes:
        return CheckOutcome(check.label, check.level, True, f"not compared: no feature of view '{view_name}' in it")
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return CheckOutcome(check.label, check.level, True, "; ".join(o.observed for o in outcomes))
    return CheckOutcome(check.label, check.level, False, "; ".join(o.observed for o in failed))


def _drift_outcome(
    check: CheckPlan, feature: str, new: FeatureStats, old: FeatureStats, *, default: bool = False
) -> CheckOutcome:
    """The drift rules of ``check`` on one feature (a declared check without ``feature`` runs this per feature)."""
    findings = drift.feature_findings(new, old, check.params["tolerance"])
    fired = [f for f in findings if f.fires]
    if not findings:
        seen = f"{feature}: not compared (fewer than {drift.MIN_ROWS} rows)"
    else:
        seen = f"{feature}: " + ("; ".join(f.describe() for f in fired) if fired else "no drift")
    return CheckOutcome(check.label, check.level, not fired, seen, default=default)


def gate(
    view: ViewPlan, rows_read: int, written: dict[str, FeatureStats], rows: RunRows, baseline: Baseline | None
) -> CheckReport:
    """Evaluate a run's checks before it commits: every engine calls this between computing the rows it would
    write (and their statistics) and its Delta commit. Raises :class:`~features.errors.ChecksFailedError` when a
    blocking check fails, unless ``baseline.skip`` (then nothing is committed or published, and the caller's
    stores stay as they were); returns the report to keep with the run otherwise, after logging what failed."""
    baseline = baseline if baseline is not None else Baseline()
    features = {f.name: f.dtype for f in view.features}
    report = evaluate(
        view.name, view.checks, features, rows_read=rows_read, written=written, rows=rows, baseline=baseline
    )
    if report.blocking and not report.skipped:
        listed = "; ".join(f"{o.check}: {o.observed}" for o in report.blocking)
        raise ChecksFailedError(
            f"view '{view.name}': {len(report.blocking)} blocking check(s) failed, so this run was neither "
            f"committed nor published (the previous values stay served; fix the data or the check and run again, "
            f"or materialize --skip-checks): {listed}",
            {view.name: report},
        )
    for outcome in report.failed:
        skipped = " (--skip-checks: published anyway)" if outcome.blocks else ""
        log.warning("view '%s': check %s failed%s: %s", view.name, outcome.check, skipped, outcome.observed)
    return report


# -- rows held in Arrow --------------------------------------------------------------------------------------------


class ArrowRows:
    """:class:`RunRows` over an Arrow table of the rows a run writes (the Arrow engine's, or a test's)."""

    def __init__(self, table: pa.Table, key_names: Sequence[str], time_column: str) -> None:
        self._table = table
        self._keys = list(key_names)
        self._time = time_column

    def failing(self, check: CheckPlan, limit: int) -> tuple[int, list[dict[str, Any]]]:
        import pyarrow.compute as pc

        assert check.feature is not None
        column = self._table.column(check.feature)
        mask = _arrow_mask(check, column)
        failing = int(pc.sum(mask).as_py() or 0)
        picked = self._table.filter(mask).slice(0, limit).select([*self._keys, self._time, check.feature])
        return failing, [json_row(r) for r in picked.to_pylist()]

    def duplicate_keys(self, limit: int) -> tuple[int, list[dict[str, Any]]]:
        import pyarrow.compute as pc

        counted = self._table.group_by(self._keys).aggregate([([], "count_all")])
        repeated = counted.filter(pc.greater(counted.column("count_all"), 1))
        extra = int(pc.sum(repeated.column("count_all")).as_py() or 0) - repeated.num_rows
        rows = repeated.rename_columns([*self._keys, "rows"]).slice(0, limit).to_pylist()
        return extra, [json_row(r) for r in rows]


def _arrow_mask(check: CheckPlan, column: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow as pa
    import pyarrow.compute as pc

    floating = pa.types.is_floating(column.type)
    if check.kind == "max_nulls":
        missing = pc.is_null(column, nan_is_null=floating)
        return missing
    if check.kind == "range":
        low, high = check.params["min"], check.params["max"]
        outside = [pc.less(column, low)] if low is not None else []
        outside += [pc.greater(column, high)] if high is not None else []
        out = outside[0] if len(outside) == 1 else pc.or_(outside[0], outside[1])  # Range has a bound at least
        return pc.fill_null(out, False)  # null and NaN are no values (NaN compares false)
    allowed = pa.array(check.params["values"], column.type)
    return pc.fill_null(pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, value_set=allowed))), False)


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """An example row as JSON-able values: times as ISO text, NaN and infinities as text."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        out[name] = value
    return out
