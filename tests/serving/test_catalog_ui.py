"""The catalog (``skewless ui``, ``/ui/`` of ``skewless serve``) over the example repository materialized on
PostgreSQL, Delta and a real Redis: the per-run statistics against the table's rows (pandas is the oracle),
lineage against what the definitions say, the pages through HTTP, and, in a real headless Chromium driven by
Playwright, the index and the links between objects."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from features.plan import Plan
from features.store import FeatureStore
from features.table_stats import table_dir
from serving_api.app import create_app
from serving_api.catalog_data import Catalog
from serving_api.catalog_ui import create_catalog_app
from tests.servers import free_port, wait_for_port
from tests.serving.catalog_repo import VIEWS, build_repo

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "definitions_plan.json"
SCREENSHOTS = os.environ.get("SKEWLESS_UI_SCREENSHOTS")  # a folder: the browser test saves its pages there


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[FeatureStore]:
    store = build_repo(tmp_path_factory.mktemp("catalog") / "repo", postgres_url, redis_url)
    yield store
    store.close()


@pytest.fixture(scope="module")
def client(store: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_catalog_app(store)) as client:
        yield client


def rows_added(path: Path, version: int) -> pd.DataFrame:
    """The oracle: the rows of the table at ``version`` that it did not hold at the version before (Arrow-backed
    columns, so a null stays apart from NaN)."""

    def rows(at: int) -> pd.DataFrame:
        return DeltaTable(str(path), version=at).to_pyarrow_table().to_pandas(types_mapper=pd.ArrowDtype)

    now = rows(version)
    if version == 0:
        return now
    merged = now.merge(rows(version - 1), how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")


def expected_stats(column: pd.Series) -> tuple[int, int, Any, Any]:
    """Rows, nulls, min and max of a column as pandas computes them (NaN is a value, but no bound)."""
    present = [v for v in column.dropna().tolist() if not (isinstance(v, float) and math.isnan(v))]
    nulls = int(column.isna().sum())
    if not present:
        return len(column), nulls, None, None
    return len(column), nulls, min(present), max(present)


def test_each_runs_statistics_are_those_of_the_rows_it_wrote(store: FeatureStore) -> None:
    plan = store.plan_version().plan
    catalog = Catalog(store)
    checked = 0
    for name in VIEWS:
        view = plan.view(name)
        path = table_dir(store.config, view.name, view.storage_fingerprint)
        for feature in view.features:
            points = catalog.feature(name, feature.name)["chart"]["points"]
            assert [p["version"] for p in points] == [0, 1]  # one point per run, two runs
            for point in points:
                rows, nulls, low, high = expected_stats(rows_added(path, point["version"])[feature.name])
                assert (point["rows"], point["nulls"]) == (rows, nulls), (name, feature.name, point)
                assert point["null_share"] == pytest.approx(nulls / rows)
                if isinstance(low, str | bool) or low is None:
                    assert (point["min"], point["max"]) == (low, high), (name, feature.name)
                else:
                    assert (point["min"], point["max"]) == pytest.approx((low, high)), (name, feature.name)
                checked += 1
    assert checked == 2 * sum(len(plan.view(v).features) for v in VIEWS)


def test_the_feature_page_shows_those_values(store: FeatureStore, client: TestClient) -> None:
    view = store.plan_version().plan.view("card_last_payment")
    path = table_dir(store.config, view.name, view.storage_fingerprint)
    page = client.get("/features/card_last_payment/amount_eur")
    assert page.status_code == 200
    for version in (0, 1):
        rows, nulls, low, high = expected_stats(rows_added(path, version)["amount_eur"])
        assert f'data-version="{version}" data-min="{low}" data-max="{high}"' in page.text  # the chart's point
        row = re.search(rf'<tr data-version="{version}">(.*?)</tr>', page.text, re.S)  # the table under it
        assert row is not None
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
        assert cells[2:4] == [str(rows), str(nulls)] and cells[5:] == [f"{low:.6g}", f"{high:.6g}"]


def test_lineage_follows_the_definitions_and_the_training_set(store: FeatureStore, client: TestClient) -> None:
    catalog = Catalog(store)
    profile = catalog.view("card_profile")
    # checks.py: payment_checks and payment_shape read card_profile's features; services.py: fraud_model reads it.
    assert profile["on_demand_views"] == ["payment_checks", "payment_shape"]
    assert profile["services"] == ["fraud_model"]
    (built,) = profile["training_sets"]
    assert built["output"].endswith("training.parquet") and built["rows"] == 4
    assert [t["id"] for t in catalog.view("merchant_risk")["training_sets"]] == [built["id"]]
    assert catalog.view("card_last_payment")["training_sets"] == []  # the set reads none of its features
    assert catalog.feature("card_profile", "card_tier")["training_sets"] != []
    assert catalog.feature("card_profile", "is_blocked")["training_sets"] == []
    # card_spend reaches the service directly and through spend_checks (an on-demand view of its mean).
    assert catalog.feature("card_spend", "amount_eur_mean_30d")["on_demand_views"] == ["spend_checks"]
    assert catalog.entity("merchant")["views"] == ["merchant_risk"]
    training = client.get(f"/training-sets/{built['id']}")
    manifest = json.loads(Path(built["manifest"]).read_text())
    assert training.status_code == 200 and manifest["plan_fingerprint"] in training.text


def test_freshness_and_runs_come_from_the_online_store_and_the_registry(store: FeatureStore) -> None:
    plan = store.plan_version().plan
    page = Catalog(store).view("card_profile")
    live = store.online_store().live_snapshot(plan.view("card_profile"))
    assert live is not None and live.watermark == 1
    assert page["online_snapshot"] == {
        "state": "current",
        "offline_version": 1,
        "published_at": live.published_at.isoformat(timespec="seconds"),
    }
    assert [r["offline_version"] for r in page["runs"]] == [1, 0]  # newest first
    assert Catalog(store).view("card_spend")["online_snapshot"] == {"state": "never published"}


def test_an_unreachable_online_store_is_said_on_the_page(store: FeatureStore) -> None:
    config = dataclasses.replace(store.config, online_url=f"redis://127.0.0.1:{free_port()}/0")
    with FeatureStore(config=config) as down, TestClient(create_catalog_app(down)) as client:
        page = client.get("/views/card_profile")
        assert page.status_code == 200  # definitions, runs and charts still render
        assert "Online store unreachable" in page.text and 'data-feature="credit_limit"' in page.text


def test_unknown_names_are_404_pages_naming_the_known_ones(client: TestClient) -> None:
    for url, known in [
        ("/views/nope", "card_profile"),
        ("/services/nope", "fraud_model"),
        ("/entities/nope", "merchant"),
        ("/features/card_profile/nope", "credit_limit"),
        ("/training-sets/999", "1"),
    ]:
        page = client.get(url)
        assert page.status_code == 404 and "known:" in page.text and known in page.text, url
        assert "Traceback" not in page.text


def test_the_catalog_is_served_under_ui_by_serve(store: FeatureStore) -> None:
    with TestClient(create_app(store.config.root)) as client:
        index = client.get("/ui/")
        assert index.status_code == 200
        assert 'href="/ui/views/card_profile"' in index.text and 'href="/ui/static/style.css"' in index.text
        view = client.get("/ui/views/card_profile")
        assert view.status_code == 200 and 'href="/ui/services/fraud_model"' in view.text
        assert client.get("/ui/static/style.css").status_code == 200
        assert client.get("/health").json()["status"] == "ok"


@pytest.fixture(scope="module")
def catalog_url(store: FeatureStore) -> Iterator[str]:
    """``skewless ui`` on a free port, as a user starts it."""
    port = free_port()
    log = store.config.root / "ui.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "features.cli", "ui", "--repo", str(store.config.root), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port)
        except Exception:
            raise AssertionError(f"skewless ui did not start: {log.read_text()}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_a_browser_follows_the_links_between_objects(catalog_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is needed (scripts/test.sh installs it)"
    plan = Plan.from_dict(json.loads(GOLDEN.read_text()))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(catalog_url + "/")
            expect(page.locator("h1")).to_have_text("Catalog")
            for kind, names in [
                ("entity", [e.name for e in plan.entities]),
                ("view", [v.name for v in (*plan.views, *plan.on_demand_views)]),
                ("service", [s.name for s in plan.services]),
                ("feature", [f"{v.name}:{f.name}" for v in (*plan.views, *plan.on_demand_views) for f in v.features]),
            ]:
                shown = page.locator(f"main a.{kind}")
                assert set(names) <= set(shown.all_text_contents()), kind
            _save(page, "index")

            page.locator("#views a.view", has_text="card_profile").click()  # index -> view
            expect(page.locator("h1")).to_have_text("card_profile")
            expect(page.locator("#freshness")).to_contain_text("Serving Delta version 1")
            charts = page.locator("figure.chart")
            expect(charts).to_have_count(4)  # one per feature: the view was materialized
            expect(page.locator('figure.chart[data-feature="credit_limit"] g.range')).to_have_count(2)
            _save(page, "view")

            page.locator(".lineage a.service", has_text="fraud_model").click()  # view -> service
            expect(page.locator("h1")).to_have_text("fraud_model")
            service = plan.services[0]
            expect(page.locator("ul.features a.feature")).to_have_count(len(service.features))

            page.locator("ul.features a.feature", has_text="card_profile:credit_limit").click()  # service -> feature
            expect(page.locator("h1")).to_have_text("card_profile:credit_limit")
            expect(page.locator("figure.chart svg")).to_have_count(1)
            expect(page.locator("table.stats tbody tr")).to_have_count(2)
            _save(page, "feature")

            page.locator("dd a.view", has_text="card_profile").click()  # feature -> back to its view
            expect(page.locator("h1")).to_have_text("card_profile")
            page.locator(".lineage a.training-set").click()  # view -> the training set built from it
            expect(page.locator("p.kind")).to_have_text("training set")
            expect(page.locator("pre.manifest")).to_contain_text("plan_fingerprint")
        finally:
            browser.close()


def _save(page: Any, name: str) -> None:
    """Screenshots for docs/ (``SKEWLESS_UI_SCREENSHOTS=docs``), of the page a user sees."""
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"ui-{name}.png"), full_page=True)
