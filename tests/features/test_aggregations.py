"""Windowed aggregation definitions: generated names, types, fingerprints, and errors with file, line, choices."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from features import Aggregation, DefinitionError, DType
from features.config import RepoConfig
from features.definitions import parse_window, window_suffix
from features.store import FeatureStore
from tests.features.conftest import ENTITIES

Repo = Callable[..., RepoConfig]

WINDOWED = """
from datetime import timedelta
from features import Aggregation, FeatureService, FeatureView, SqlSource
from repo_defs.entities import card

txns = SqlSource(connection="main", table="txns", timestamp="ts", created="created")

card_spend = FeatureView(
    entities=[card],
    source=txns,
    cadence="1d",
    ttl=timedelta(days=2),
    aggregations=[
        Aggregation("sum", "amount", windows=["1h", "1d", "7d", "unbounded"]),
        Aggregation("count", windows=["30d"]),
        Aggregation("mean", "amount * fx_rate", windows=["7d"], name="amount_eur_mean"),
        Aggregation("count", windows=["7d"], filter="amount > 100", name="big_count"),
        Aggregation("sum", "n", windows=["1d"]),
        Aggregation("last", "label", windows=["30d"]),
        Aggregation("count_distinct", "label", windows=["7d"]),
        Aggregation("stddev", "n", windows=["7d"]),
    ],
)

svc = FeatureService(features=[card_spend["amount_sum_7d"], card_spend["big_count_7d"]])
"""


def test_windowed_view_compiles_to_generated_typed_features(make_repo: Repo) -> None:
    plan = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": WINDOWED})).compile()
    view = plan.view("card_spend")
    assert view.cadence_seconds == 86_400
    types = {f.name: f.dtype for f in view.features}
    assert types == {
        "amount_sum_1h": DType.FLOAT64,
        "amount_sum_1d": DType.FLOAT64,
        "amount_sum_7d": DType.FLOAT64,
        "amount_sum_all": DType.FLOAT64,
        "count_30d": DType.INT64,
        "amount_eur_mean_7d": DType.FLOAT64,
        "big_count_7d": DType.INT64,
        "n_sum_1d": DType.INT64,
        "label_last_30d": DType.STRING,
        "label_count_distinct_7d": DType.INT64,
        "n_stddev_7d": DType.FLOAT64,
    }
    windows = {f.name: f.aggregation.window_seconds for f in view.features if f.aggregation}
    assert windows["amount_sum_1h"] == 3600 and windows["amount_sum_all"] is None
    big = view.feature("big_count_7d").aggregation
    assert big is not None and big.filter is not None and big.filter.columns() == {"amount"}
    assert [str(r) for r in plan.service("svc").features] == ["card_spend:amount_sum_7d", "card_spend:big_count_7d"]
    assert {c.name for c in view.source.columns} == {"card_id", "ts", "created", "amount", "fx_rate", "n", "label"}


def test_window_changes_change_only_their_fingerprints(make_repo: Repo) -> None:
    config = make_repo({"entities.py": ENTITIES, "views.py": WINDOWED})
    before = FeatureStore(config=config).compile().view("card_spend")
    make_repo({"entities.py": ENTITIES, "views.py": WINDOWED.replace('filter="amount > 100"', 'filter="amount > 50"')})
    after = FeatureStore(config=config).compile().view("card_spend")
    changed = {f.name for f in before.features if f.fingerprint != after.feature(f.name).fingerprint}
    assert changed == {"big_count_7d"}
    assert before.storage_fingerprint != after.storage_fingerprint
    make_repo({"entities.py": ENTITIES, "views.py": WINDOWED.replace('cadence="1d"', 'cadence="12h"')})
    recadenced = FeatureStore(config=config).compile().view("card_spend")
    assert all(f.fingerprint != recadenced.feature(f.name).fingerprint for f in before.features)


BAD = [
    ('Aggregation("count", windows=["30d"])', 'Aggregation("median", windows=["30d"])',
     "unknown aggregation 'median'; valid choices: count, sum, mean, min, max, stddev, last, first, count_distinct",
     15),
    ('Aggregation("sum", "n", windows=["1d"])', 'Aggregation("sum", "label", windows=["1d"])',
     "sum needs a numeric input (int64 or float64), but `label` is string", 18),
    ('Aggregation("sum", "n", windows=["1d"])', 'Aggregation("sum", "nope", windows=["1d"])',
     "aggregation 'nope_sum': unknown column 'nope'", 18),
    ('filter="amount > 100"', 'filter="amount + 100"', "filter `amount + 100` is float64; it must be a boolean", 17),
    ('name="amount_eur_mean"', "", "aggregation of the expression `amount * fx_rate` needs name=", 16),
    ('windows=["30d"])', 'windows=["30 days"])', "'30 days' is not a duration; write e.g. '1h'", 15),
    ('Aggregation("count", windows=["30d"])',
     'Aggregation("count", windows=["30d"]), Aggregation("count", windows=["1d", "30d"])',
     "duplicate feature name(s) ['count_30d'] in one view (give the aggregations different name=...)", 8),
    ('cadence="1d",', "", "a view with aggregations needs a cadence, e.g. cadence='1d'", 8),
    ("ttl=timedelta(days=2)", "ttl=timedelta(hours=2)", "ttl 2:00:00 is shorter than the cadence 1d", 8),
    ('cadence="1d"', 'cadence="10s"', "cadence must be a duration of at least one minute", 8),
    ('Aggregation("sum", "n", windows=["1d"])', 'Aggregation("sum", windows=["1d"])',
     "aggregation 'sum' needs a column", 18),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "message", "line"), BAD)
def test_bad_aggregations_name_file_line_and_choices(
    make_repo: Repo, old: str, new: str, message: str, line: int
) -> None:
    assert old in WINDOWED
    store = FeatureStore(config=make_repo({"entities.py": ENTITIES, "views.py": WINDOWED.replace(old, new, 1)}))
    with pytest.raises(DefinitionError) as info:
        store.apply()
    assert message in str(info.value)
    assert f"views.py:{line}" in str(info.value), str(info.value)
    assert store.registry.latest() is None


def test_windows_parse_and_name() -> None:
    assert [parse_window(w) for w in ("1h", "7d", "90m", "2w", "unbounded", None, timedelta(hours=3))] == [
        3600,
        7 * 86400,
        5400,
        14 * 86400,
        None,
        None,
        10800,
    ]
    assert [window_suffix(s) for s in (3600, 86400 * 30, 5400, 45, None)] == ["1h", "30d", "90m", "45s", "all"]
    assert Aggregation("count").feature_names() == ("count_all",)
    assert Aggregation("max", "amount", windows="7d").feature_names() == ("amount_max_7d",)
    with pytest.raises(DefinitionError, match="duplicate window"):
        Aggregation("sum", "amount", windows=["1d", "24h"])
    with pytest.raises(DefinitionError, match="at least one window"):
        Aggregation("sum", "amount", windows=[])
