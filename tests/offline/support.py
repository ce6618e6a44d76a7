"""Helpers for the offline tests: hand-built plans and a file-backed online store test double."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.dtypes import DType
from features.expressions import parse_expression
from features.plan import ColumnSpec, EntityPlan, FeaturePlan, Plan, SourcePlan, ViewPlan, stable_hash
from features.protocols import LiveSnapshot, OnlineValues


def make_view(
    name: str,
    *,
    connection: str,
    table: str | None = None,
    query: str | None = None,
    keys: dict[str, DType],
    columns: dict[str, DType],
    features: dict[str, str],
    timestamp: str = "ts",
    created: str | None = None,
    ttl_seconds: int | None = None,
    online: bool = True,
) -> ViewPlan:
    """A ViewPlan built the way the compiler would (expressions parsed against the source columns)."""
    all_columns = {**keys, **columns}
    feats = []
    for fname, text in features.items():
        expr = parse_expression(text, all_columns)
        feats.append(FeaturePlan(fname, expr.dtype, expr, stable_hash([name, fname, expr.to_dict()]), "test"))
    used = set(keys) | {timestamp} | ({created} if created else set())
    for f in feats:
        used |= f.expr.columns()
    source = SourcePlan(
        f"{name}_source",
        connection,
        table,
        query,
        timestamp,
        created,
        tuple(ColumnSpec(c, t) for c, t in all_columns.items() if c in used),
    )
    storage = stable_hash([name, [f.fingerprint for f in feats], sorted(keys), table, query])
    return ViewPlan(
        name,
        (name + "_entity",),
        tuple(ColumnSpec(k, t) for k, t in keys.items()),
        source,
        tuple(feats),
        ttl_seconds,
        online,
        storage,
        "test",
    )


def make_plan(*views: ViewPlan) -> Plan:
    return Plan(
        entities=tuple(EntityPlan(v.entities[0], v.join_keys, "test") for v in views), views=tuple(views), services=()
    )


class FilePublication:
    """Stages Arrow batches as files; commit swaps them in as the live table of the view (os.replace)."""

    def __init__(self, root: str, view: ViewPlan, watermark: int, fail_on_write: bool) -> None:
        self.root = root
        self.view = view.name
        self.storage_fingerprint = view.storage_fingerprint
        self.features = [[f.name, f.fingerprint] for f in view.features]
        self.watermark = watermark
        self.fail_on_write = fail_on_write
        self.staging = os.path.join(root, "staging", f"{self.view}-{uuid.uuid4().hex}")
        os.makedirs(self.staging)

    def write(self, batches: Iterable[pa.RecordBatch]) -> int:
        count = 0
        for batch in batches:
            if self.fail_on_write:
                raise RuntimeError("injected failure while staging online rows")
            pq.write_table(pa.Table.from_batches([batch]), os.path.join(self.staging, f"{uuid.uuid4().hex}.parquet"))
            count += batch.num_rows
        return count

    def commit(self) -> bool:
        meta_path = os.path.join(self.root, f"{self.view}.json")
        live = json.loads(Path(meta_path).read_text())["watermark"] if os.path.exists(meta_path) else -1
        if self.watermark < live:
            self.abort()
            return False
        files = sorted(Path(self.staging).glob("*.parquet"))
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables) if tables else None
        tmp = os.path.join(self.root, f"{self.view}.tmp.parquet")
        if table is not None:
            pq.write_table(table, tmp)
            os.replace(tmp, os.path.join(self.root, f"{self.view}.parquet"))
        meta = {
            "watermark": self.watermark,
            "commits": _commits(meta_path) + 1,
            "storage_fingerprint": self.storage_fingerprint,
            "features": self.features,
            "published_at": datetime.now(UTC).isoformat(),
        }
        Path(meta_path).write_text(json.dumps(meta))
        shutil.rmtree(self.staging, ignore_errors=True)
        return True

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _commits(meta_path: str) -> int:
    return int(json.loads(Path(meta_path).read_text())["commits"]) if os.path.exists(meta_path) else 0


class FileOnlineStore:
    """A picklable OnlineStore test double; ``live(view)`` returns the committed rows as pandas."""

    def __init__(self, root: str | Path, *, fail_on_write: bool = False) -> None:
        self.root = str(root)
        self.fail_on_write = fail_on_write
        self.started: list[int] = []
        os.makedirs(self.root, exist_ok=True)

    def start_publication(
        self, view: ViewPlan, *, watermark: int, confirmed_at: datetime | None = None
    ) -> FilePublication:
        self.started.append(watermark)
        return FilePublication(self.root, view, watermark, self.fail_on_write)

    def live_snapshot(self, view: ViewPlan) -> LiveSnapshot | None:
        meta_path = Path(self.root) / f"{view.name}.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return LiveSnapshot(
            watermark=meta["watermark"],
            storage_fingerprint=meta["storage_fingerprint"],
            feature_fingerprints=tuple((n, f) for n, f in meta["features"]),
            published_at=datetime.fromisoformat(meta["published_at"]),
        )

    def live(self, view: str) -> Any:
        path = os.path.join(self.root, f"{view}.parquet")
        return pq.read_table(path) if os.path.exists(path) else None

    def staged_dirs(self) -> list[str]:
        staging = os.path.join(self.root, "staging")
        return (
            [d for d in os.listdir(staging) if os.listdir(os.path.join(staging, d))] if os.path.isdir(staging) else []
        )

    def read(
        self, requests: Sequence[tuple[ViewPlan, Sequence[str]]], entities: Mapping[str, Sequence[Any]]
    ) -> list[OnlineValues]:
        raise NotImplementedError("not needed by the offline tests")

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> FileOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
