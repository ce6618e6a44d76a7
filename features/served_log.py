"""The served-feature log: what one logged lookup becomes, and the one schema every writer and reader shares.

``skewless serve`` logs a sample of the lookups it answers (``serving.log`` in ``skewless.yaml``); the audit
(``skewless audit``) reads them back and compares each served value with the offline side. The log is a Delta
table at ``<offline path>/_served_log`` partitioned by ``day``, with one row per (lookup, entity, feature): a
long layout keeps one schema whatever features a lookup asked for, and reads in Spark SQL and pandas alike.

Values are kept as JSON text, as the HTTP answer writes them (non-finite floats as ``"NaN"``, ``"Infinity"``,
``"-Infinity"``; timestamps as ISO-8601 text in UTC), so one column holds every type without loss: a float's
JSON text is its shortest repr, which reads back to the same double. :func:`decode_value` turns it back into
the plan type. A null value is a SQL null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from features.dtypes import DType

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.config import RepoConfig
    from features.lookup import LookupResult

LOG_FOLDER = "_served_log"  # under the offline path; Delta tables of views never start with "_"
LANDING_FOLDER = "_landing"  # under the log's folder: Parquet batches the serving workers wrote, not landed yet
DAY = "day"  # the partition column: the UTC day the lookup was served, "YYYY-MM-DD"

#: (column, Arrow type name, meaning): the log table's columns, in order. The Arrow schema is :func:`schema`.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("request_id", "string", "the X-Request-ID of the answer"),
    ("served_at", "timestamp", "when the lookup was answered (UTC, microseconds)"),
    (DAY, "string", "the UTC day of served_at, YYYY-MM-DD (the partition)"),
    ("service", "string", "the feature service asked for; null when the request listed features"),
    ("plan_version", "int64", "the plan version that answered"),
    ("entity_index", "int32", "the entity's position in the request"),
    ("entity", "string", "the entity's join-key values, a JSON object with sorted keys"),
    ("request_data", "string", "the entity's request_data fields, a JSON object; null when none were sent"),
    ("view", "string", "the view of the feature"),
    ("feature", "string", "the output column, <view>__<feature>"),
    ("value", "string", "the served value as JSON text (as the HTTP answer writes it); null for no value"),
    ("status", "string", "present, missing or expired"),
    ("event_timestamp", "timestamp", "the served row's event time; null when none"),
    ("snapshot", "string", "the publication version of the view's snapshot read; null when none"),
)


def schema() -> pa.Schema:
    """The Arrow schema of the log table (and of every landing batch)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([(name, types[kind]) for name, kind, _ in COLUMNS])


def log_dir(config: RepoConfig) -> Path:
    """Where the log's Delta table lives."""
    return config.resolved_offline_path() / LOG_FOLDER


def landing_dir(config: RepoConfig) -> Path:
    """Where serving workers leave Parquet batches of logged lookups until they are landed in the table."""
    return log_dir(config) / LANDING_FOLDER


@dataclass(frozen=True, slots=True)
class LoggedLookup:
    """One answered lookup as the server hands it to the log: references only, nothing copied or encoded on the
    request's path (a :class:`~features.lookup.LookupResult` is never mutated once built)."""

    request_id: str
    served_micros: int  # when it was answered, microseconds since the epoch (UTC)
    service: str | None
    result: LookupResult
    request_data: Mapping[str, Sequence[Any]] | None = None


def encode_value(value: Any) -> str | None:
    """A served value as JSON text, as the HTTP answer writes it; None stays None (SQL null)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return '"NaN"' if math.isnan(value) else ('"Infinity"' if value > 0 else '"-Infinity"')
    if isinstance(value, datetime):
        from features.lookup import iso_utc

        return orjson.dumps(iso_utc(value)).decode()
    return orjson.dumps(value).decode()


def decode_value(dtype: DType, text: str | None) -> Any:
    """The value of JSON ``text`` as the plan type ``dtype`` (floats, ints, strings, bools, UTC datetimes)."""
    if text is None:
        return None
    value = orjson.loads(text)
    if value is None:
        return None
    if dtype is DType.FLOAT64:
        return float(value)  # "NaN", "Infinity", "-Infinity" and numbers alike
    if dtype is DType.TIMESTAMP:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return value


def to_rows(lookups: Sequence[LoggedLookup]) -> pa.Table:
    """The log rows of ``lookups``: one per (lookup, entity, feature), in :func:`schema` (the audit's ``--sample``
    path; a serving worker writes JSON lines instead, expanded by :func:`rows_from_lines` when they land)."""
    return _rows(
        (
            logged.request_id,
            logged.served_micros,
            logged.service,
            logged.result.to_dict(),
            None if not logged.request_data else {k: list(v) for k, v in logged.request_data.items()},
            logged.result.snapshots,
        )
        for logged in lookups
    )


RAW_SUFFIX = ".jsonl"  # a serving worker's batch: one JSON line per lookup (see raw_line)


def raw_line(
    request_id: str,
    served_micros: int,
    service: str | None,
    answer: bytes,
    request_data: Mapping[str, Sequence[Any]] | None,
    snapshots: Mapping[str, str | None],
) -> bytes:
    """One logged lookup as a JSON line: the answer's own bytes (the native HTTP answer, ``LookupResult.to_dict``
    as JSON) embedded as they are, so a serving worker encodes only the small parts (~1 µs)."""
    head = orjson.dumps({"id": request_id, "at": served_micros, "service": service, "snapshots": snapshots})
    data = b"null" if not request_data else orjson.dumps({k: list(v) for k, v in request_data.items()})
    return head[:-1] + b',"request_data":' + data + b',"answer":' + answer + b"}\n"


def rows_from_lines(data: bytes) -> pa.Table:
    """The log rows (:func:`schema`) of a serving worker's batch of JSON lines: each answer expanded into one row
    per entity and feature."""
    lookups = []
    for line in data.splitlines():
        if line:
            record = orjson.loads(line)
            lookups.append(
                (
                    record["id"],
                    record["at"],
                    record["service"],
                    record["answer"],
                    record["request_data"],
                    record["snapshots"],
                )
            )
    return _rows(lookups)


def landed_rows(path: Path) -> pa.Table:
    """The log rows of a batch from the landing folder: a serving worker's JSON lines expanded, or a Parquet
    batch of log rows (:func:`to_rows`, :func:`write_batch`) as it is."""
    if path.suffix == RAW_SUFFIX:
        return rows_from_lines(path.read_bytes())
    import pyarrow.parquet as pq

    return pq.read_table(path).cast(schema())


def write_lines(config: RepoConfig, lines: Sequence[bytes]) -> str:
    """Write a serving worker's lines (:func:`raw_line`) as one batch in the landing folder; returns its name. A
    hidden temporary name first, then a rename, so a landing never reads half a batch; the name starts with the
    time, so batches land in the order they were written. One ``join`` and one write: the GIL is hardly held."""
    import os
    import time
    import uuid

    folder = landing_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}{RAW_SUFFIX}"
    temporary = folder / f".{name}.tmp"
    try:
        temporary.write_bytes(b"".join(lines))
        os.replace(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return name


def _rows(lookups: Iterable[tuple[str, int, str | None, dict[str, Any], Any, Mapping[str, Any]]]) -> pa.Table:
    """The long rows of lookups given with their answers in the HTTP answer's JSON form (``LookupResult.to_dict``):
    values are already JSON-ready, so a value's text is its JSON."""
    import pyarrow as pa

    from features.dtypes import from_micros

    columns: dict[str, list[Any]] = {name: [] for name, _, _ in COLUMNS}
    micros_of: dict[str, int] = {}
    for request_id, served_micros, service, answer, request_data, snapshots in lookups:
        day = from_micros(served_micros).strftime("%Y-%m-%d")
        entity_columns = answer["entities"]
        names = sorted(entity_columns)
        count = len(entity_columns[names[0]]) if names else 0
        entities = [orjson.dumps({name: entity_columns[name][i] for name in names}).decode() for i in range(count)]
        per_entity = _per_entity(request_data, count)
        for column, found in answer["features"].items():
            view = column.split("__", 1)[0]
            snapshot = snapshots.get(view)
            values, statuses, stamps = found["values"], found["statuses"], found["event_timestamps"]
            for i in range(count):
                value = values[i]
                stamp = stamps[i]
                if stamp is not None and stamp not in micros_of:
                    micros_of[stamp] = _micros(stamp)
                columns["request_id"].append(request_id)
                columns["served_at"].append(served_micros)
                columns[DAY].append(day)
                columns["service"].append(service)
                columns["plan_version"].append(answer["plan_version"])
                columns["entity_index"].append(i)
                columns["entity"].append(entities[i])
                columns["request_data"].append(per_entity[i])
                columns["view"].append(view)
                columns["feature"].append(column)
                columns["value"].append(None if value is None else orjson.dumps(value).decode())
                columns["status"].append(statuses[i])
                columns["event_timestamp"].append(None if stamp is None else micros_of[stamp])
                columns["snapshot"].append(snapshot)
    target = schema()
    arrays = []
    for field in target:
        data = columns[field.name]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(data, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(data, field.type))
    return pa.Table.from_arrays(arrays, schema=target)


def _per_entity(request_data: Mapping[str, Sequence[Any]] | None, count: int) -> list[str | None]:
    """Each entity's request-data fields as a JSON object with sorted keys (None when none were sent)."""
    if not request_data:
        return [None] * count
    names = sorted(request_data)
    return [orjson.dumps({name: _plain(request_data[name][i]) for name in names}).decode() for i in range(count)]


def _plain(value: Any) -> Any:
    """A request value as JSON holds it (times as ISO text, non-finite floats as text)."""
    if isinstance(value, datetime):
        from features.lookup import iso_utc

        return iso_utc(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _micros(iso: str) -> int:
    from features.dtypes import to_micros

    return to_micros(datetime.fromisoformat(iso.replace("Z", "+00:00")))


def write_batch(config: RepoConfig, rows: pa.Table) -> str:
    """Write log rows (:func:`schema`, from :func:`to_rows`) as one Parquet batch in the landing folder; returns
    its name. A hidden temporary name first, then a rename, so a landing never reads half
    a batch; the name starts with the time, so batches land in the order they were written."""
    import os
    import time
    import uuid

    import pyarrow.parquet as pq

    folder = landing_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
    temporary = folder / f".{name}.tmp"
    try:
        pq.write_table(rows, temporary)
        os.replace(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return name


def entity_rows(log: pa.Table) -> pd.DataFrame:
    """The logged lookups as a training set's entity rows: one row per (lookup, entity) with ``request_id``,
    ``served_at``, ``service``, ``plan_version``, the join-key columns and the request-data fields, so
    ``FeatureStore.get_training_dataset(rows, ..., timestamp_column="served_at")`` joins the features as of the
    instant each was served (a training set of the lookups a model really saw)."""
    import pandas as pd

    seen: set[tuple[str, int]] = set()
    records: list[dict[str, Any]] = []
    columns = ("request_id", "entity_index", "served_at", "service", "plan_version", "entity", "request_data")
    for row in log.select(list(columns)).to_pylist():
        identity = (row["request_id"], row["entity_index"])
        if identity in seen:
            continue
        seen.add(identity)
        record = {name: row[name] for name in ("request_id", "served_at", "service", "plan_version")}
        record.update(orjson.loads(row["entity"]))
        if row["request_data"] is not None:
            record.update(orjson.loads(row["request_data"]))
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True)
    return frame
