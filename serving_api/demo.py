"""``skewless demo``: the whole path on embedded defaults, narrated.

Creates the example payments data, applies the definitions, materializes every view into Delta Lake and the
online store, builds a point-in-time training set, starts the HTTP service and queries it (the example's
``skewless.yaml`` logs every lookup served), then audits what was served against the offline side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from features.cli import joined_in, print_diff, print_materialized
from features.console import console, progress_bars, table
from features.plots import plot_coverage
from features.store import FeatureStore


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run the whole path on the example repository, end to end")
    p.add_argument("--repo", default=".", help="the example repository (default: here)")
    p.add_argument("--port", type=int, default=0, help="port for the demo's HTTP service (default: a free one)")
    p.add_argument("--cards", type=int, default=1_000, help="how many cards the example data has")
    p.add_argument("--payments", type=int, default=30_000, help="how many payments the example data has")
    p.set_defaults(handler=run_demo)


def step(number: int, text: str) -> None:
    console.rule(f"[bold]{number}. {text}", align="left")


def run_demo(args: argparse.Namespace) -> int:
    from definitions._example_data import create_example_data

    started = time.monotonic()
    store = FeatureStore(args.repo)
    url = store.config.connection_url("payments")
    step(1, "Create the example payments database")
    counts = create_example_data(url, cards=args.cards, payments=args.payments)
    console.print(table(f"Source tables at {url}", ["table", "rows"], sorted(counts.items())))

    step(2, "Apply the definitions in definitions/ to the registry")
    result = store.apply()
    print_diff(result.diff)
    plan = result.version.plan
    console.print(
        f"plan version {result.version.version}: {len(plan.views)} feature views, "
        f"{sum(len(v.features) for v in plan.views)} features, {len(plan.services)} feature service(s)"
    )

    step(3, "Materialize: SQL source -> Spark -> Delta Lake -> online store")
    with progress_bars() as progress:
        runs = store.materialize(progress=progress)
    print_materialized(runs)

    step(4, "Build a point-in-time correct training set for the fraud model")
    entities = _training_entities(url)
    out = store.config.state_dir() / "datasets" / "fraud_model_training.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    training = store.get_training_dataset(
        entities, feature_service="fraud_model", timestamp_column="paid_at", output=str(out)
    )
    filled = training.drop(columns=list(entities.columns)).notna().mean().round(3)
    console.print(f"{len(training)} rows x {len(training.columns)} columns -> {out} (joined in {joined_in(str(out))})")
    console.print(table("Share of rows with a value, per feature", ["feature", "filled"], list(filled.items())))
    head = training.head(3)
    rows = [(column, *(_cell(v, "present") for v in head[column])) for column in training.columns]
    console.print(table("First training rows (one column per row)", ["column", "row 1", "row 2", "row 3"], rows))
    console.print(f"manifest (rebuild with 'skewless dataset --reproduce ...'): {out}.manifest.json")
    picture = plot_coverage(training, "paid_at", out.with_suffix(".coverage.png"))
    console.print(f"picture of the feature coverage per day: {picture}")

    step(5, "Serve: start the HTTP service and ask it for online features")
    answer = _serve_and_query(store, args.port)
    keys = answer["entities"]
    entities = [f"card {c} @ merchant {m}" for c, m in zip(keys["card_id"], keys["merchant_id"], strict=True)]
    rows = [
        (name, *(_cell(v, s) for v, s in zip(column["values"], column["statuses"], strict=True)))
        for name, column in answer["features"].items()
    ]
    console.print(
        table(
            "POST /v1/features  {feature_service: fraud_model, request_data: {amount, fx_rate}}",
            ["feature", *entities],
            rows,
        )
    )
    step(6, "Audit: every value served, compared with the offline side at the instant it was served")
    from features.audit_command import print_audit
    from features.audit_report import write_html

    audit = store.audit(["fraud_model"])
    print_audit(audit)
    report = write_html(audit, store.config.state_dir() / "audit.html")
    console.print(
        f"{audit.lookups} logged lookups audited: worst mismatch rate {audit.worst_rate:.2%} "
        f"(served vs stored at that instant, and stored vs recomputed from the sources); report: {report}"
    )
    console.print(
        f"\n[bold green]demo finished in {time.monotonic() - started:.0f}s.[/] "
        f"Next: 'skewless serve' and open http://127.0.0.1:6566/docs"
    )
    store.close()
    return 0


def _cell(value: Any, status: str) -> str:
    if status != "present":
        return f"({status})"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _training_entities(url: str) -> Any:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql_query(
            "SELECT card_id, merchant_id, paid_at, amount, fx_rate FROM payments ORDER BY payment_id LIMIT 2000", conn
        )
    engine.dispose()
    frame["paid_at"] = pd.to_datetime(frame["paid_at"], utc=True)
    return frame


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_query(store: FeatureStore, port: int) -> dict[str, Any]:
    from serving_api.client import SkewlessClient

    port = port or _free_port()
    env = dict(os.environ)
    command = [
        sys.executable,
        "-m",
        "features.cli",
        "serve",
        "--repo",
        str(Path(store.config.root)),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = SkewlessClient(f"http://127.0.0.1:{port}", timeout=5.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.health()
                break
            except Exception as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = server.stderr.read() if server.stderr else ""
                    raise RuntimeError(f"the service did not start: {log}") from exc
                time.sleep(0.3)
        console.print(f"service up at http://127.0.0.1:{port} (OpenAPI at /docs)")
        for card in range(1, 21):  # one-entity lookups, as a model server sends them (logged: see step 6)
            client.get_features(
                {"card_id": [card], "merchant_id": [card % 7 + 1]},
                feature_service="fraud_model",
                request_data={"amount": [10.0 * card], "fx_rate": [1.0]},
            )
        return dict(
            client.get_features(
                {"card_id": [1, 2, 3, 999_999], "merchant_id": [10, 20, 30, 40]},
                feature_service="fraud_model",
                request_data={"amount": [25.0, 4_800.0, 120.0, 10.0], "fx_rate": [1.0, 1.0, 0.92, 1.0]},
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
