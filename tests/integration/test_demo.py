"""The README's first command, as a user runs it: `skewless demo` on a fresh copy of the example repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.test_readme import check_python_and_http_blocks

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_path(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "definitions", repo / "definitions", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "skewless.yaml", repo / "skewless.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "PAYMENTS_"))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "features.cli", "demo", "--repo", str(repo), "--cards", "60", "--payments", "800"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        for step in (
            "1. Create the example payments database",
            "2. Apply",
            "3. Materialize",
            "4. Build a point-in-time",
            "5. Serve",
            "POST /v1/features",
            "6. Audit",
            "demo finished",
        ):
            assert step in out, out[-3000:]
        # The example logs every lookup it serves; the audit finds every one of them, and no skew.
        assert "21 logged lookups audited: worst mismatch rate 0.00%" in out, out[-3000:]
        assert (repo / ".skewless" / "audit.html").is_file()
        dataset = repo / ".skewless" / "datasets" / "fraud_model_training.parquet"
        frame = pd.read_parquet(dataset)
        assert len(frame) == 800 and "card_profile__credit_limit" in frame.columns
        manifest = json.loads(Path(f"{dataset}.manifest.json").read_text())
        assert manifest["plan_version"] == 1 and "(joined in Arrow)" in out
        # The demo's SQLite source is Spark's, and the run says why Arrow did not take it.
        assert "computed in spark (not in arrow: the source is in sqlite; only PostgreSQL sources are read" in out
        # `skewless dataset` on the demo's entity rows gives the demo's columns; --reproduce rebuilds it.
        cli = [sys.executable, "-m", "features.cli", "dataset", "--repo", str(repo)]
        again_path = tmp_path / "again.parquet"
        refs = "card_profile:credit_limit,card_last_payment:amount_eur"
        entities = f"{dataset}.entities.parquet"
        built = subprocess.run(
            [
                *cli,
                "--entities",
                entities,
                "--features",
                refs,
                "--timestamp-column",
                "paid_at",
                "--out",
                f"{again_path}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert built.returncode == 0 and "joined in Arrow" in built.stdout, built.stdout[-3000:] + built.stderr[-3000:]
        columns = ["card_profile__credit_limit", "card_last_payment__amount_eur"]
        pd.testing.assert_frame_equal(pd.read_parquet(again_path)[columns], frame[columns])
        rebuilt = subprocess.run(
            [*cli, "--reproduce", f"{again_path}.manifest.json"], env=env, capture_output=True, text=True, timeout=600
        )
        assert rebuilt.returncode == 0 and "rebuilt the dataset" in rebuilt.stdout, rebuilt.stderr[-3000:]
        # Running it again works on the same repository (embedded server reused, plan unchanged).
        again = subprocess.run(
            [sys.executable, "-m", "features.cli", "demo", "--repo", str(repo), "--cards", "60", "--payments", "800"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        # The README's Python and HTTP blocks, as written, on this repository (see tests/integration/test_readme.py).
        check_python_and_http_blocks(repo, env)
    finally:
        from online.embedded import stop_embedded_server

        stop_embedded_server(repo / ".skewless")
