"""``skewless stats``: the statistics each run stored in the registry (real PostgreSQL source, Delta, Redis; the
Arrow engine takes these runs), held to pandas on the source rows; a training set's manifest records its set's
statistics; the command draws one PNG per feature and names what is wrong with a bad request."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.cli import main
from tests.integration.test_push import BASE, Repo, payment

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_stats_of_runs_and_of_a_training_set(
    tmp_path: Path, postgres_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo(tmp_path / "repo", postgres_url, redis_url)
    root = str(repo.store.config.root)
    try:
        assert main(["materialize", "last_payment", "--repo", root]) == 0
        # After the first run's watermark (hour 5): a row older than it would not be read (no late_rows declared).
        repo.add_source([payment(1, hours=9, amount=500.0, merchant="Big"), payment(4, hours=6, amount=-2.0)])
        assert main(["materialize", "last_payment", "--repo", root]) == 0
        first, second = repo.store.registry.runs("last_payment")
        assert first.stats is not None and second.stats is not None and second.stats.engine == "arrow"

        # The oracle: the second run wrote the two new rows and published (in place, the default) the newest row of
        # each card whose newest row changed.
        source = pd.DataFrame(repo.source)
        source["amount_eur"] = source["amount"] * source["fx_rate"]

        def newest_of(frame: pd.DataFrame) -> pd.DataFrame:
            return frame.sort_values(["paid_at", "recorded_at"]).groupby("card_id").tail(1)

        newest, before = newest_of(source), newest_of(source.head(len(source) - 2))
        keys = ["card_id", "paid_at"]
        changed = newest[~newest.set_index(keys).index.isin(before.set_index(keys).index)]
        assert len(changed) == 2
        for rows, stats in ((source.tail(2), second.stats.written), (changed, second.stats.published)):
            amount = stats["amount_eur"]
            assert (amount.count, amount.nulls, amount.min, amount.max) == (
                len(rows),
                0,
                rows["amount_eur"].min(),
                rows["amount_eur"].max(),
            )
            assert math.isclose(amount.mean or 0, rows["amount_eur"].mean(), rel_tol=1e-12)
            assert math.isclose(amount.stddev or 0, rows["amount_eur"].std(ddof=1), rel_tol=1e-9)
            merchants = rows["merchant"].str.lower().value_counts()
            assert dict(stats["merchant_lower"].top) == merchants.to_dict()
            assert stats["big"].distinct == (rows["amount"] > 100).nunique()

        # A training set's manifest holds its set's statistics: the reference beside the runs.
        out = tmp_path / "set.parquet"
        entities = pd.DataFrame(
            {"card_id": [1, 2, 3, 4, 9], "event_timestamp": [BASE + timedelta(hours=20)] * 4 + [BASE]}
        )
        got = repo.store.get_training_dataset(entities, features=["last_payment:amount_eur"], output=str(out))
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        recorded = manifest["stats"]["written"]["last_payment__amount_eur"]
        values = got["last_payment__amount_eur"]
        assert (recorded["count"], recorded["nulls"]) == (5, int(values.isna().sum()))
        assert (recorded["min"], recorded["max"]) == (values.min(), values.max())

        capsys.readouterr()
        plots = tmp_path / "plots"
        args = ["stats", "last_payment", "--repo", root, "--plot", str(plots), "--reference", f"{out}.manifest.json"]
        assert main(args) == 0
        shown = capsys.readouterr().out
        assert "run 2 of 2" in shown and "previous run" in shown and "reference" in shown and "p99" in shown
        drawn = sorted(p.name for p in plots.iterdir())
        assert drawn == [f"last_payment__{f}.png" for f in ("amount_eur", "big", "merchant_lower")]
        assert all((plots / name).read_bytes().startswith(b"\x89PNG") for name in drawn)

        assert main(["stats", "last_payment", "--repo", root, "--run", "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(first.stats.to_json())

        assert main(["stats", "nope", "--repo", root]) == 1
        assert "view 'nope' has no run with statistics; views that have: last_payment" in capsys.readouterr().out
        assert main(["stats", "last_payment", "--repo", root, "--run", "3"]) == 1
        assert "runs 1 to 2" in capsys.readouterr().out
    finally:
        repo.store.close()
