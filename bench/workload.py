"""The one workload both systems get: two feature views over users and an entity table with its edge rows.

    workload = generate(scale=0.05, seed=7, end=datetime(2026, 11, 30, tzinfo=UTC))
    workload.views["user_profile"].frame        # user_id, event_ts, created_ts, 5 features
    workload.entities                           # row_id, user_id, ts (+ the kind of each edge row)

At scale 1.0: 100,000 users, 2,000,000 feature rows over 60 days (1,000,000 per view), 10 features, and a
200,000-row entity table. The edge rows the point-in-time join must get right are planted on purpose and
labelled in the entity table's ``kind`` column:

- ``before_any``: a time before the user's first row in either view (every feature null);
- ``ttl_boundary``: exactly ``ttl`` after a feature row of ``user_profile`` that is the latest at that time
  (still valid: the rule is ``t - event_ts <= ttl``), and ``ttl_expired`` one second later (null);
- ``duplicate``: a copy of another entity row (same user, same time), which must come back as its own row;
- ``tie``: the time of a feature row that shares its event time with another row of the same user, told
  apart only by ``created_ts`` (the later created row wins);
- ``random``: everything else.

Data ends at ``end`` (the harness passes today's midnight UTC, so online values are within TTL) and
starts 60 days before. Everything is a pure function of ``scale``, ``seed`` and ``end``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

DAYS = 60
USERS = 100_000
FEATURE_ROWS = 2_000_000
ENTITY_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """One feature view: its name, TTL and features (name, type: ``int64``, ``float64`` or ``string``)."""

    name: str
    ttl: timedelta
    features: tuple[tuple[str, str], ...]


VIEWS = (
    ViewSpec(
        "user_profile",
        timedelta(days=30),
        (
            ("credit_score", "int64"),
            ("income", "float64"),
            ("tenure_days", "int64"),
            ("segment", "string"),
            ("risk", "float64"),
        ),
    ),
    ViewSpec(
        "user_activity",
        timedelta(days=7),
        (
            ("clicks_1d", "int64"),
            ("spend_1d", "float64"),
            ("sessions_7d", "int64"),
            ("last_device", "string"),
            ("avg_basket", "float64"),
        ),
    ),
)
SEGMENTS = np.array(["new", "casual", "regular", "loyal", "vip"])
DEVICES = np.array(["ios", "android", "web", "tv"])


@dataclass(frozen=True)
class ViewData:
    spec: ViewSpec
    frame: pd.DataFrame  # user_id, event_ts, created_ts, features...


@dataclass(frozen=True)
class Workload:
    scale: float
    seed: int
    start: datetime
    end: datetime
    users: int
    views: dict[str, ViewData]
    entities: pd.DataFrame  # row_id, user_id, ts, kind

    @property
    def feature_rows(self) -> int:
        return sum(len(v.frame) for v in self.views.values())

    def feature_refs(self) -> list[str]:
        """``view:feature`` for all ten features."""
        return [f"{v.name}:{name}" for v in VIEWS for name, _ in v.features]

    def feature_columns(self) -> list[str]:
        """``view__feature`` for all ten features: the columns of a training set."""
        return [f"{v.name}__{name}" for v in VIEWS for name, _ in v.features]


def generate(scale: float = 1.0, seed: int = 7, *, end: datetime) -> Workload:
    """The workload at ``scale`` (1.0: the issue's sizes). ``end`` must be timezone-aware UTC."""
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware (UTC)")
    rng = np.random.default_rng(seed)
    users = max(50, int(USERS * scale))
    rows_per_view = max(500, int(FEATURE_ROWS * scale) // len(VIEWS))
    start = end - timedelta(days=DAYS)
    span_s = DAYS * 86_400
    views = {}
    for spec in VIEWS:
        views[spec.name] = ViewData(spec, _view_rows(rng, spec, users, rows_per_view, start, span_s))
    entities = _entities(rng, views, users, max(200, int(ENTITY_ROWS * scale)), start, span_s)
    return Workload(scale, seed, start, end, users, views, entities)


def _view_rows(
    rng: np.random.Generator, spec: ViewSpec, users: int, total: int, start: datetime, span_s: int
) -> pd.DataFrame:
    count = round(total / 1.015)  # plus 1% tied twins and 0.5% exact duplicates below: ``total`` rows in all
    # Users own rows unevenly (a few busy ones); every user is guaranteed nothing.
    user_ids = (rng.zipf(1.2, count) % users) + 1
    user_ids = np.where(rng.random(count) < 0.7, rng.integers(1, users + 1, count), user_ids)
    # Whole seconds, in the first 59 days, so the last day holds only planted rows and TTL arithmetic is exact.
    offsets = rng.integers(0, span_s - 86_400, count)
    base = pd.Timestamp(start)
    event_ts = base + pd.to_timedelta(offsets, unit="s")
    created_ts = event_ts + pd.to_timedelta(rng.integers(0, 3_600, count), unit="s")
    frame = pd.DataFrame({"user_id": user_ids.astype("int64"), "event_ts": event_ts, "created_ts": created_ts})
    for name, dtype in spec.features:
        if dtype == "int64":
            frame[name] = rng.integers(0, 1_000, count).astype("int64")
        elif dtype == "float64":
            frame[name] = np.round(rng.gamma(2.0, 50.0, count), 4)
        else:
            choices = SEGMENTS if spec.name == "user_profile" else DEVICES
            frame[name] = choices[rng.integers(0, len(choices), count)]
    # Ties: 1% of rows get a twin with the same user and event time, a later created time and other values.
    twins = frame.sample(frac=0.01, random_state=int(rng.integers(0, 2**31))).copy()
    twins["created_ts"] = twins["created_ts"] + pd.Timedelta(seconds=1)
    for name, dtype in spec.features:
        if dtype == "string":
            twins[name] = twins[name].str.upper()
        else:
            twins[name] = twins[name] + 1
    # Exact duplicate rows (same everything): 0.5%. Harmless to a correct join, and a classic double count.
    dupes = frame.sample(frac=0.005, random_state=int(rng.integers(0, 2**31)))
    out = pd.concat([frame, twins, dupes], ignore_index=True)
    return out.sample(frac=1.0, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)


def _entities(
    rng: np.random.Generator, views: dict[str, ViewData], users: int, count: int, start: datetime, span_s: int
) -> pd.DataFrame:
    base = pd.Timestamp(start)
    first_seen = (
        pd.concat([v.frame[["user_id", "event_ts"]] for v in views.values()]).groupby("user_id")["event_ts"].min()
    )
    planted = []
    n_edge = max(5, count // 50)  # 2% of the table per kind of edge row

    # Before any feature: users with data, one second before their first row.
    users_with_data = first_seen.sample(n=min(n_edge, len(first_seen)), random_state=int(rng.integers(0, 2**31)))
    planted.append(
        pd.DataFrame({"user_id": users_with_data.index, "ts": users_with_data - pd.Timedelta(seconds=1)}).assign(
            kind="before_any"
        )
    )

    # TTL boundary: the latest user_profile row of a user, and a time exactly ttl later, provided no later
    # row of that user comes before it; the same time plus one second is just expired.
    profile = views["user_profile"]
    ttl = pd.Timedelta(profile.spec.ttl)
    rows = profile.frame.sort_values(["user_id", "event_ts"])
    nxt = rows.groupby("user_id")["event_ts"].shift(-1)
    eligible = rows[(nxt.isna() | (nxt > rows["event_ts"] + ttl + pd.Timedelta(seconds=1)))]
    eligible = eligible.drop_duplicates(["user_id", "event_ts"])
    chosen = eligible.sample(n=min(n_edge, len(eligible)), random_state=int(rng.integers(0, 2**31)))
    planted.append(
        pd.DataFrame({"user_id": chosen["user_id"].values, "ts": (chosen["event_ts"] + ttl).values}).assign(
            kind="ttl_boundary"
        )
    )
    planted.append(
        pd.DataFrame(
            {"user_id": chosen["user_id"].values, "ts": (chosen["event_ts"] + ttl + pd.Timedelta(seconds=1)).values}
        ).assign(kind="ttl_expired")
    )

    # Ties: the event time of a row that has a twin (same user and event time, different created time).
    frame = profile.frame
    tied = frame[frame.duplicated(["user_id", "event_ts"], keep=False)].drop_duplicates(["user_id", "event_ts"])
    tied = tied.sample(n=min(n_edge, len(tied)), random_state=int(rng.integers(0, 2**31)))
    planted.append(pd.DataFrame({"user_id": tied["user_id"].values, "ts": tied["event_ts"].values}).assign(kind="tie"))

    planted_rows = pd.concat(planted, ignore_index=True)
    n_random = max(0, count - len(planted_rows) - n_edge)
    offsets = rng.integers(0, span_s, n_random)
    random_rows = pd.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, n_random).astype("int64"),
            "ts": base
            + pd.to_timedelta(offsets, unit="s")
            + pd.to_timedelta(rng.integers(0, 1_000_000, n_random), unit="us"),
            "kind": "random",
        }
    )
    table = pd.concat([planted_rows, random_rows], ignore_index=True)
    dupes = table.sample(n=min(n_edge, len(table)), random_state=int(rng.integers(0, 2**31))).assign(kind="duplicate")
    table = pd.concat([table, dupes], ignore_index=True)
    table = table.sample(frac=1.0, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)
    table["user_id"] = table["user_id"].astype("int64")
    table["ts"] = pd.to_datetime(table["ts"], utc=True)
    table.insert(0, "row_id", np.arange(len(table), dtype="int64"))
    return table
