"""A training set's manifest: what it joined, from which table versions, with which engine and why.

It is written beside the set as ``<output>.manifest.json`` (keys sorted, so a reviewer can diff two of them) and
is all :meth:`offline.router.Router.reproduce` needs to rebuild the identical set later. Typed here, JSON on
disk: :meth:`Manifest.to_json` and :meth:`Manifest.from_json` are the only places that know the file's keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.dtypes import DType
from features.errors import DatasetError
from features.run_stats import RunStats

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_FORMAT = 1
OUTPUT_FORMATS = ("pandas", "spark", "arrow")


@dataclass(frozen=True, slots=True)
class ViewRead:
    """One view's table as a training set reads it: pinned at ``version``."""

    name: str
    path: str
    version: int
    ttl_seconds: int | None
    storage_fingerprint: str
    join_keys: tuple[tuple[str, DType], ...]
    features: tuple[str, ...]
    through: datetime | None = None  # windowed views: the last tick the table covers at that version
    cadence_seconds: int | None = None

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.join_keys)

    def freshness(self) -> tuple[int | None, datetime | None]:
        """The TTL in seconds and, for a windowed view, when its values stop being fresh (its TTL counts from the
        last tick computed instead of from each row's event time)."""
        if self.through is None:
            return self.ttl_seconds, None
        if self.ttl_seconds is None:
            return None, None
        return None, self.through + timedelta(seconds=self.ttl_seconds)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "version": self.version,
            "ttl_seconds": self.ttl_seconds,
            "storage_fingerprint": self.storage_fingerprint,
            "join_keys": [{"name": name, "dtype": dtype.value} for name, dtype in self.join_keys],
            "features": list(self.features),
        }
        if self.through is not None:
            out |= {"through": self.through.isoformat(), "cadence_seconds": self.cadence_seconds}
        return out

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ViewRead:
        through = data.get("through")
        return cls(
            name=name,
            path=data["path"],
            version=int(data["version"]),
            ttl_seconds=data["ttl_seconds"],
            storage_fingerprint=data["storage_fingerprint"],
            join_keys=tuple((k["name"], DType(k["dtype"])) for k in data["join_keys"]),
            features=tuple(data["features"]),
            through=None if through is None else datetime.fromisoformat(through),
            cadence_seconds=data.get("cadence_seconds"),
        )


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A Parquet file written with the set (its entity rows, or the set itself): where, its hash, its rows."""

    path: str
    sha256: str
    rows: int

    @classmethod
    def of(cls, path: str, table: pa.Table) -> FileRecord:
        return cls(str(Path(path).resolve()), table_sha256(table), table.num_rows)


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything a training set was built from. ``views`` are in the order the set's columns follow (the order
    in which the refs first name each view, then views joined only as inputs of on-demand features)."""

    created_at: str
    plan_version: int
    plan_fingerprint: str
    refs: tuple[str, ...]
    feature_fingerprints: dict[str, str]
    timestamp_column: str
    output_format: str
    views: tuple[ViewRead, ...]
    on_demand: dict[str, Any] | None = None  # offline.on_demand.on_demand_spec()
    entities: FileRecord | None = None
    result: FileRecord | None = None
    joined_in: str | None = None  # the engine whose code joined it: "arrow" or "spark" (the warm engine's is Spark)
    #: Why each engine asked before it did not join it (engine name -> reason), in the order asked.
    refusals: dict[str, str] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    #: The statistics of the set's feature columns (``written``): the reference for drift. None: built without output.
    stats: RunStats | None = None

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def feature_columns(self) -> list[str]:
        """The ``<view>__<feature>`` columns the join appends, in order (before on-demand features)."""
        return [f"{view.name}__{feature}" for view in self.views for feature in view.features]

    def check_entity_columns(self, columns: list[str]) -> None:
        """Raise :class:`~features.errors.EntityKeyError` when the entity rows lack a column the join needs."""
        from features.errors import EntityKeyError

        for view in self.views:
            missing = [c for c in (*view.key_names, self.timestamp_column) if c not in columns]
            if missing:
                raise EntityKeyError(
                    f"the entity rows lack column(s) {', '.join(missing)} needed by view '{view.name}'; "
                    f"they have: {', '.join(columns)}"
                )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "created_at": self.created_at,
            "plan_version": self.plan_version,
            "plan_fingerprint": self.plan_fingerprint,
            "refs": list(self.refs),
            "feature_fingerprints": dict(self.feature_fingerprints),
            "timestamp_column": self.timestamp_column,
            "output_format": self.output_format,
            "views": {view.name: view.to_json() for view in self.views},
        }
        if self.on_demand is not None:
            out["on_demand"] = self.on_demand
        for name, record in (("entities", self.entities), ("result", self.result)):
            if record is not None:
                out[name] = dataclasses.asdict(record)
        if self.joined_in is not None:
            out["joined_in"] = self.joined_in
            out["refusals"] = dict(self.refusals)
        if self.stats is not None:
            out["stats"] = self.stats.to_dict()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """The manifest of a JSON document, its views put back in the set's column order (the file is written
        with sorted keys, so ``views`` come back in name order; a rebuilt set would otherwise have its columns
        in another order, and another hash)."""
        views = data.get("views", {})
        named = dict.fromkeys(ref.partition(":")[0] for ref in data.get("refs", []))
        order = [v for v in named if v in views] + [v for v in views if v not in named]
        records = {name: FileRecord(**data[name]) if name in data else None for name in ("entities", "result")}
        return cls(
            created_at=data["created_at"],
            plan_version=int(data["plan_version"]),
            plan_fingerprint=data["plan_fingerprint"],
            refs=tuple(data["refs"]),
            feature_fingerprints=dict(data["feature_fingerprints"]),
            timestamp_column=data["timestamp_column"],
            output_format=data["output_format"],
            views=tuple(ViewRead.from_json(name, views[name]) for name in order),
            on_demand=data.get("on_demand"),
            entities=records["entities"],
            result=records["result"],
            joined_in=data.get("joined_in"),
            refusals=dict(data.get("refusals", {})),
            format=int(data.get("format", MANIFEST_FORMAT)),
            stats=RunStats.from_dict(data["stats"]) if "stats" in data else None,
        )

    def write(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str) -> Manifest:
        """The manifest in the file at ``path``; :class:`DatasetError` when it cannot be read."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"cannot read the manifest {path}: {exc}") from exc


def table_sha256(table: pa.Table) -> str:
    """A sha256 of a table's schema and values (Arrow IPC of the combined chunks, without metadata)."""
    import pyarrow as pa

    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
