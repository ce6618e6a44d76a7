"""The registry: versioned plans, materialization runs and the training sets written to files, in a SQL
database, through SQLAlchemy.

SQLite file by default, any SQLAlchemy URL (PostgreSQL in production). A plan version is written only when
the plan's fingerprint differs from the latest one, so applying the same definitions twice is a no-op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from features.checks import CheckReport
from features.errors import ContractError, RegistryError
from features.plan import Plan
from features.redaction import redact_text, redact_url
from features.run_stats import RunStats

if TYPE_CHECKING:
    from features.contracts import Contract

_metadata = sa.MetaData()

plan_versions = sa.Table(
    "skewless_plan_versions",
    _metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("fingerprint", sa.String(32), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("plan_json", sa.Text, nullable=False),
)

materialization_runs = sa.Table(
    "skewless_materialization_runs",
    _metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view", sa.String(200), nullable=False, index=True),
    sa.Column("storage_fingerprint", sa.String(32), nullable=False),
    sa.Column("plan_version", sa.Integer, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rows_read", sa.BigInteger, nullable=False),
    sa.Column("rows_written_offline", sa.BigInteger, nullable=False),
    sa.Column("offline_version", sa.BigInteger, nullable=True),
    sa.Column("rows_published", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    # Added after the first release: registries created before get them on open (see _add_missing_columns).
    # A row without them is a successful run of an unknown engine.
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("engine", sa.String(20), nullable=True),
    sa.Column("outcome", sa.String(20), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("rows_landed", sa.BigInteger, nullable=True),
    sa.Column("stats_json", sa.Text, nullable=True),  # features.run_stats.RunStats; None: a run without them
    sa.Column("checks_json", sa.Text, nullable=True),  # features.checks.CheckReport; None: a run before checks
    sa.Column("read_kind", sa.String(10), nullable=True),  # offline.incremental.ReadWindow.kind; None: unknown
)

# Added after the first release: ``create_all`` adds the table to an older registry when it is opened.
training_sets = sa.Table(
    "skewless_training_sets",
    _metadata,
    sa.Column("set_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("plan_version", sa.Integer, nullable=False),
    sa.Column("feature_service", sa.String(200), nullable=True),
    sa.Column("features_json", sa.Text, nullable=False),  # the "view:feature" references, a JSON list
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Rollbacks and releases of views' online snapshots (skewless rollback): who, when, from and to which.
rollbacks = sa.Table(
    "skewless_rollbacks",
    _metadata,
    sa.Column("rollback_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view", sa.String(200), nullable=False, index=True),
    sa.Column("action", sa.String(20), nullable=False),  # "rollback" or "release"
    sa.Column("from_snapshot", sa.String(40), nullable=True),
    sa.Column("to_snapshot", sa.String(40), nullable=True),
    sa.Column("offline_version", sa.BigInteger, nullable=True),  # the Delta version the snapshot came from
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Training contracts (features/contracts.py): a manifest's features and fingerprints, under a name.
contracts = sa.Table(
    "skewless_contracts",
    _metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("plan_version", sa.Integer, nullable=False),
    sa.Column("plan_fingerprint", sa.String(64), nullable=False),
    sa.Column("fingerprints_json", sa.Text, nullable=False),  # {"view:feature": fingerprint}
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("registered_by", sa.String(200), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
)

# The text of each request-time function's module as it was applied, by the function's source fingerprint: what
# serves a training contract's earlier version of a function after its file changed (features/functions.py).
function_sources = sa.Table(
    "skewless_function_sources",
    _metadata,
    sa.Column("source_fingerprint", sa.String(32), primary_key=True),
    sa.Column("module", sa.String(400), nullable=False),
    sa.Column("module_text", sa.Text, nullable=False),
    sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    """A rollback of a view's online snapshot (``from_snapshot`` -> ``to_snapshot``), or the release of its hold."""

    view: str
    action: str  # "rollback" or "release"
    who: str
    at: datetime
    from_snapshot: str | None = None
    to_snapshot: str | None = None
    offline_version: int | None = None


@dataclass(frozen=True, slots=True)
class PlanVersion:
    version: int
    fingerprint: str
    applied_at: datetime
    plan: Plan


@dataclass(frozen=True, slots=True)
class RunRecord:
    view: str
    storage_fingerprint: str
    plan_version: int
    window_start: datetime | None
    window_end: datetime | None
    rows_read: int
    rows_written_offline: int
    offline_version: int | None
    rows_published: int
    finished_at: datetime
    started_at: datetime | None = None
    engine: str | None = None  # whose code computed it: "arrow" or "spark"
    outcome: str = "ok"  # or "failed"
    error: str | None = None  # why it failed
    rows_landed: int | None = None  # pushed rows landed in the table before the run read it
    stats: RunStats | None = None  # per feature, of the rows written and published (features/run_stats.py)
    checks: CheckReport | None = None  # every check's outcome, and whether --skip-checks was given
    read_kind: str | None = None  # which source rows it read: all, range (--start), since (the cursor), ticks
    run_id: int | None = None  # the registry's number for it, once recorded


@dataclass(frozen=True, slots=True)
class TrainingSetRecord:
    """A training set written to a file: where (the set and its manifest), from which plan version and
    features (and the service that named them, if one did), how many rows, and when."""

    output: str
    manifest: str
    plan_version: int
    features: tuple[str, ...]
    rows: int
    created_at: datetime
    feature_service: str | None = None
    set_id: int | None = None  # the registry's number for it, once recorded

    @property
    def views(self) -> tuple[str, ...]:
        """The views its features come from, in the order they are first named."""
        return tuple(dict.fromkeys(ref.partition(":")[0] for ref in self.features))


class Registry:
    """Plan versions, run history and training sets in one SQL database."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        try:
            self.engine = sa.create_engine(url)
            _create_or_upgrade(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot open the registry at {redact_url(url)}: {redact_text(str(exc))}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def latest(self) -> PlanVersion | None:
        return self._one(sa.select(plan_versions).order_by(plan_versions.c.version.desc()).limit(1))

    def versions(self) -> list[PlanVersion]:
        """Every plan version, oldest first."""
        return self._all(sa.select(plan_versions).order_by(plan_versions.c.version))

    def drop(self) -> None:
        """Delete the registry: its tables (only these: a PostgreSQL database may hold other things), and the
        file of a SQLite registry."""
        try:
            _metadata.drop_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot drop the registry's tables: {exc}") from exc
        self.engine.dispose()
        if self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            database = Path(self.url[len("sqlite:///") :])
            for path in (database, *(database.with_name(database.name + s) for s in ("-journal", "-wal", "-shm"))):
                path.unlink(missing_ok=True)

    def get(self, version: int) -> PlanVersion:
        found = self._one(sa.select(plan_versions).where(plan_versions.c.version == version))
        if found is None:
            raise RegistryError(f"plan version {version} is not in the registry")
        return found

    def apply(self, plan: Plan, *, planned_against: int | EllipsisType | None = ...) -> tuple[PlanVersion, bool]:
        """Store ``plan`` as a new version unless it equals the latest; returns (version, created).

        ``planned_against`` is the version the plan was diffed against (None: an empty registry). The plan is
        written only on top of it: if another apply wrote a version in between, nothing is written and a
        :class:`~features.errors.RegistryError` says so (plan again, and look at the new diff). The check and
        the write are one transaction, and the version number is the primary key: of concurrent applies on
        the same version, exactly one wins, on SQLite and PostgreSQL alike. ``...`` (the default): on top of
        whatever version is latest.
        """
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Take the write lock before reading, so two applies read the latest version one after the
                    # other (a deferred transaction would read, then fail to upgrade its lock: "locked").
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                row = conn.execute(
                    sa.select(plan_versions.c.version, plan_versions.c.fingerprint)
                    .order_by(plan_versions.c.version.desc())
                    .limit(1)
                ).first()
                latest = row.version if row is not None else None
                if row is not None and row.fingerprint == plan.fingerprint:
                    conn.rollback()
                    return self.get(row.version), False  # these definitions are already the latest version
                if planned_against is not ... and latest != planned_against:
                    conn.rollback()
                    raise _moved(planned_against, latest)
                version = (latest or 0) + 1
                applied_at = datetime.now(UTC)
                conn.execute(
                    plan_versions.insert().values(
                        version=version, fingerprint=plan.fingerprint, applied_at=applied_at, plan_json=plan.to_json()
                    )
                )
                conn.commit()
        except sa.exc.IntegrityError as exc:
            # Another apply inserted the same version number after this one read the latest: it won.
            now = self.latest()
            base = (version - 1 or None) if planned_against is ... else planned_against
            raise _moved(base, now.version if now else None) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot write the registry: {exc}") from exc
        return PlanVersion(version, plan.fingerprint, applied_at, plan), True

    def record_run(self, record: RunRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(materialization_runs.insert().values(**_as_row(record)))

    def runs(self, view: str | None = None, *, failed: bool = False) -> list[RunRecord]:
        """The successful runs (of ``view``), oldest first; ``failed``: the failed ones too."""
        query = sa.select(materialization_runs).order_by(materialization_runs.c.run_id)
        if view is not None:
            query = query.where(materialization_runs.c.view == view)
        if not failed:
            query = query.where(_succeeded())
        with self.engine.connect() as conn:
            return [
                RunRecord(
                    **{k: v for k, v in row._mapping.items() if k not in ("outcome", "stats_json", "checks_json")},
                    outcome=row.outcome or "ok",
                    stats=None if row.stats_json is None else RunStats.from_json(row.stats_json),
                    checks=None if row.checks_json is None else CheckReport.from_json(row.checks_json),
                )
                for row in conn.execute(query)
            ]

    def record_training_set(self, record: TrainingSetRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                training_sets.insert().values(
                    output=record.output,
                    manifest=record.manifest,
                    plan_version=record.plan_version,
                    feature_service=record.feature_service,
                    features_json=json.dumps(list(record.features)),
                    rows=record.rows,
                    created_at=record.created_at,
                )
            )

    def training_sets(self) -> list[TrainingSetRecord]:
        """Every training set recorded, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(training_sets).order_by(training_sets.c.set_id)).all()
        return [
            TrainingSetRecord(
                output=row.output,
                manifest=row.manifest,
                plan_version=row.plan_version,
                features=tuple(json.loads(row.features_json)),
                rows=row.rows,
                created_at=_aware(row.created_at),
                feature_service=row.feature_service,
                set_id=row.set_id,
            )
            for row in rows
        ]

    def record_rollback(self, record: RollbackRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(rollbacks.insert().values(**{f: getattr(record, f) for f in RollbackRecord.__slots__}))

    def rollbacks(self, view: str | None = None) -> list[RollbackRecord]:
        """The rollbacks and releases (of ``view``), oldest first."""
        query = sa.select(rollbacks).order_by(rollbacks.c.rollback_id)
        if view is not None:
            query = query.where(rollbacks.c.view == view)
        with self.engine.connect() as conn:
            return [
                RollbackRecord(**{**{f: row._mapping[f] for f in RollbackRecord.__slots__}, "at": _aware(row.at)})
                for row in conn.execute(query)
            ]

    def register_contract(self, fields: dict[str, Any], *, by: str) -> tuple[Contract, bool]:
        """Store a contract (``fields`` from :func:`features.contracts.from_manifest`); (the contract, whether
        it is new). The same name with the same features and fingerprints is the contract already there; with
        others, :class:`ContractError` (a name means one set of definitions for as long as it lives)."""
        from features.contracts import Contract

        existing = self.contracts().get(fields["name"])
        if existing is not None and existing.retired_at is not None:
            raise ContractError(f"contract '{fields['name']}' was retired; register this one under another name")
        if existing is not None:
            if existing.fingerprints == fields["fingerprints"] and existing.plan_version == fields["plan_version"]:
                return existing, False
            raise ContractError(
                f"contract '{fields['name']}' already exists with other features or definitions (plan version "
                f"{existing.plan_version}); register this one under another name"
            )
        contract = Contract(**fields, registered_at=datetime.now(UTC), registered_by=by)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    contracts.insert().values(
                        name=contract.name,
                        plan_version=contract.plan_version,
                        plan_fingerprint=contract.plan_fingerprint,
                        fingerprints_json=json.dumps(contract.fingerprints),
                        manifest=contract.manifest,
                        registered_at=contract.registered_at,
                        registered_by=by,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise ContractError(f"contract '{contract.name}' was registered meanwhile by another process") from exc
        return contract, True

    def contracts(self) -> dict[str, Contract]:
        """Every contract registered (retired ones too), by name, oldest first."""
        from features.contracts import Contract

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(contracts).order_by(contracts.c.registered_at)).all()
        return {
            row.name: Contract(
                name=row.name,
                plan_version=row.plan_version,
                plan_fingerprint=row.plan_fingerprint,
                fingerprints=json.loads(row.fingerprints_json),
                registered_at=_aware(row.registered_at),
                registered_by=row.registered_by,
                manifest=row.manifest,
                retired_at=None if row.retired_at is None else _aware(row.retired_at),
            )
            for row in rows
        }

    def retire_contract(self, name: str) -> Contract:
        """Retire the active contract ``name`` (lookups under it get 404 from now on); UnknownNameError else."""
        from features.contracts import find

        found = find(self.contracts(), name)
        with self.engine.begin() as conn:
            conn.execute(contracts.update().where(contracts.c.name == name).values(retired_at=datetime.now(UTC)))
        return found

    def keep_function_sources(self, sources: dict[str, tuple[str, str]]) -> None:
        """Keep each function's module text (source fingerprint -> (module, text)) unless kept already."""
        if not sources:
            return
        with self.engine.begin() as conn:
            kept = {row[0] for row in conn.execute(sa.select(function_sources.c.source_fingerprint))}
            for fingerprint, (module, text) in sources.items():
                if fingerprint not in kept:
                    conn.execute(
                        function_sources.insert().values(
                            source_fingerprint=fingerprint, module=module, module_text=text, stored_at=datetime.now(UTC)
                        )
                    )

    def function_source(self, source_fingerprint: str) -> tuple[str, str] | None:
        """(module, module text) kept for the function of ``source_fingerprint``; None when none was kept."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(function_sources.c.module, function_sources.c.module_text).where(
                    function_sources.c.source_fingerprint == source_fingerprint
                )
            ).first()
        return None if row is None else (row[0], row[1])

    def materialized_storage(self) -> set[tuple[str, str]]:
        """(view, storage fingerprint) pairs that have data: what a breaking change would orphan."""
        query = (
            sa.select(materialization_runs.c.view, materialization_runs.c.storage_fingerprint)
            .where(_succeeded())
            .distinct()
        )
        with self.engine.connect() as conn:
            return {(r.view, r.storage_fingerprint) for r in conn.execute(query)}

    def _one(self, query: sa.Select[tuple[object, ...]]) -> PlanVersion | None:
        found = self._all(query.limit(1))
        return found[0] if found else None

    def _all(self, query: sa.Select[tuple[object, ...]]) -> list[PlanVersion]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot read the registry: {exc}") from exc
        return [
            PlanVersion(row.version, row.fingerprint, _aware(row.applied_at), Plan.from_json(row.plan_json))
            for row in rows
        ]


def _moved(planned_against: int | None, latest: int | None) -> RegistryError:
    def name(version: int | None) -> str:
        return "no version" if version is None else f"version {version}"

    return RegistryError(
        f"the registry moved from {name(planned_against)} to {name(latest)} since this plan (another apply "
        f"wrote it); nothing was written: run plan again"
    )


def _aware(value: datetime) -> datetime:
    """A time read back from the registry, in UTC: SQLite keeps no time zone."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _as_row(record: RunRecord) -> dict[str, object]:
    skipped = ("stats", "checks", "run_id")
    row = {name: getattr(record, name) for name in RunRecord.__dataclass_fields__ if name not in skipped}
    return row | {
        "stats_json": None if record.stats is None else record.stats.to_json(),
        "checks_json": None if record.checks is None else record.checks.to_json(),
    }


def _succeeded() -> sa.ColumnElement[bool]:
    outcome = materialization_runs.c.outcome
    return sa.or_(outcome.is_(None), outcome == "ok")


def _create_or_upgrade(engine: sa.Engine) -> None:
    """Create the tables and columns the registry lacks. Processes opening a new registry at once (two applies)
    each find a table missing and create it: the slower fails ("already exists"). Each such failure means
    another process made progress, so looking again, once per table and column at most, finds them in place."""
    attempts = len(_metadata.tables) + len(materialization_runs.columns)
    for attempt in range(attempts):
        try:
            _metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except sa.exc.SQLAlchemyError as exc:
            # Only a lost creation race; a database that cannot be reached fails at once.
            created_meanwhile = isinstance(exc, sa.exc.IntegrityError) or any(
                words in str(exc).lower() for words in ("already exists", "duplicate")
            )
            if not created_meanwhile or attempt == attempts - 1:
                raise


def _add_missing_columns(engine: sa.Engine) -> None:
    """Add the run table's newer columns to a registry created before them (all nullable: old rows stay valid)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(materialization_runs.name)}
    missing = [c for c in materialization_runs.columns if c.name not in present]
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.exec_driver_sql(f'ALTER TABLE {materialization_runs.name} ADD COLUMN "{column.name}" {kind}')
