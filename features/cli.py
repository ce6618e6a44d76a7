"""The ``skewless`` command line: init, plan, apply, materialize, dataset (serve and demo plug in)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from features.catalog import KINDS, describe, list_objects, run_summary
from features.checks import CheckReport, outcome_rows
from features.console import console, progress_bars, table
from features.errors import ChecksFailedError, ContractError, SkewlessError
from features.plugins import all_plugins
from features.protocols import MaterializationResult


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except SkewlessError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skewless", description="A feature store without training/serving skew.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("init", help="create a feature repository named after its folder (or the example)")
    p.add_argument("path", nargs="?", default=".", help="folder to create (default: here)")
    p.add_argument("--example", action="store_true", help="copy the example repository (card fraud) instead")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("plan", help="show what apply would change in the registry")
    _repo_arg(p)
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("apply", help="store the definitions as a new plan version")
    _repo_arg(p)
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("materialize", help="compute feature views into Delta Lake and publish them online")
    _repo_arg(p)
    p.add_argument("views", nargs="*", metavar="VIEW", help="views to materialize (default: all)")
    p.add_argument("--start", type=_timestamp, help="window start, inclusive (ISO date or time, UTC)")
    p.add_argument("--end", type=_timestamp, help="window end, exclusive (ISO date or time, UTC)")
    p.add_argument(
        "--republish",
        action="store_true",
        help="publish online even when the online store already serves the table version (it lost keys)",
    )
    p.add_argument(
        "--skip-checks",
        action="store_true",
        help="publish even when a blocking check fails (the checks still run and are recorded with the run)",
    )
    p.set_defaults(handler=cmd_materialize)

    p = sub.add_parser("dataset", help="build a point-in-time correct training set")
    _repo_arg(p)
    p.add_argument("--entities", help="entity rows: a Parquet or CSV file with join keys and a timestamp column")
    p.add_argument("--features", help="a feature service name, or view:feature[,view:feature...]")
    p.add_argument("--timestamp-column", default="event_timestamp", help="timestamp column of the entity rows")
    p.add_argument("--out", help="output Parquet file (a manifest is written beside it)")
    p.add_argument("--reproduce", metavar="MANIFEST", help="rebuild a dataset from its manifest")
    p.add_argument("--plot", metavar="PNG", help="also draw the feature coverage per day into this PNG file")
    p.set_defaults(handler=cmd_dataset)

    p = sub.add_parser("list", help="list what the applied plan defines: entities, views, services or features")
    _repo_arg(p)
    p.add_argument("kind", nargs="?", default="views", choices=KINDS, help="what to list (default: views)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("runs", help="the run history of every view, or of some: rows, versions, engine, outcome")
    _repo_arg(p)
    p.add_argument("views", nargs="*", metavar="VIEW", help="views to show (default: all)")
    p.add_argument("--last", type=int, default=20, help="how many of the latest runs (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("status", help="freshness per view: last runs, the online snapshot and its age; exit 1 if stale")
    _repo_arg(p)
    p.add_argument("views", nargs="*", metavar="VIEW", help="views to show (default: all stored views)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("stats", help="the statistics of a view's run per feature, beside the previous run's")
    _repo_arg(p)
    p.add_argument("view", metavar="VIEW", help="a materialized view")
    p.add_argument("--run", type=int, help="the view's N-th run (1: its first; -1: its latest, the default)")
    p.add_argument("--reference", metavar="MANIFEST", help="also show a training set's statistics (its manifest)")
    p.add_argument("--plot", metavar="DIR", help="also draw each feature's distribution into DIR/VIEW__FEATURE.png")
    p.add_argument("--json", action="store_true", help="print the run's statistics as JSON, for scripts")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("describe", help="everything about one entity, view or service, with its last runs")
    _repo_arg(p)
    p.add_argument("name", help="an entity, view, on-demand view or service")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(handler=cmd_describe)

    p = sub.add_parser("prune", help="delete Delta tables and online keys no plan version uses (a dry run first)")
    _repo_arg(p)
    p.add_argument("--yes", action="store_true", help="delete (without it: only show what would be deleted)")
    p.add_argument(
        "--keep-versions",
        type=int,
        metavar="N",
        help="only the last N plan versions protect tables (default: all). Training sets of older versions then "
        "cannot be reproduced; the manifests found under the repository and --manifests folders are named",
    )
    p.add_argument(
        "--manifests", action="append", default=[], metavar="DIR", help="also look for training-set manifests here"
    )
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(handler=cmd_prune)

    p = sub.add_parser(
        "contract", help="register, list or retire training contracts (the definitions a model was trained on)"
    )
    _repo_arg(p)
    p.add_argument("action", choices=["register", "list", "retire"], help="what to do")
    p.add_argument("manifest", nargs="?", help="register: a training set's manifest (<set>.manifest.json)")
    p.add_argument("--name", help="the contract's name (register, retire)")
    p.add_argument("--json", action="store_true", help="list: print JSON, for scripts")
    p.set_defaults(handler=cmd_contract)

    p = sub.add_parser(
        "rollback", help="serve what a view's previous run published again, at once (held until --release)"
    )
    _repo_arg(p)
    p.add_argument("view", help="an online view")
    p.add_argument(
        "--to",
        metavar="SNAPSHOT",
        help="the snapshot to serve: N (a whole snapshot) or N.s (the s-th run updated in place in it); default: "
        "the newest one older than the live",
    )
    p.add_argument("--release", action="store_true", help="end the hold: the next run publishes again")
    p.add_argument("--list", action="store_true", help="only list the kept snapshots")
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("teardown", help="delete the repository's registry, tables and online keys; stop its servers")
    _repo_arg(p)
    p.add_argument("--yes", action="store_true", help="do not ask for the project name to confirm")
    p.set_defaults(handler=cmd_teardown)

    for name, register in sorted(all_plugins("skewless.commands").items()):
        register(sub)
        _ = name
    return parser


def _repo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or time: {text!r} (e.g. 2024-05-01 or 2024-05-01T12:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from features.store import FeatureStore

    return FeatureStore(args.repo)


def cmd_init(args: argparse.Namespace) -> int:
    """A clean repository named after its folder, or (``--example``) a copy of the example repository."""
    target = Path(args.path).resolve()
    if not args.example:
        from features.skeleton import project_name, write_skeleton

        written = write_skeleton(target)
        console.print(f"created the feature repository '{project_name(target)}' in {target}:")
        for path in written:
            console.print(f"  {path.relative_to(target)}")
        console.print("next: describe your data in definitions/, then 'skewless plan' and 'skewless apply'")
        return 0
    # The installed example package sits beside this one. Not ``import definitions``: once a repository's
    # definitions were discovered in this process, that name is the repository's folder, not the example.
    source = Path(__file__).resolve().parents[1] / "definitions"
    (target / "definitions").mkdir(parents=True, exist_ok=True)
    for item in source.glob("*.py"):
        if item.name != "__init__.py":
            shutil.copy(item, target / "definitions" / item.name)
    config = target / "skewless.yaml"
    if not config.exists():
        shutil.copy(source / "skewless.example.yaml", config)
    console.print(f"created a feature repository in {target}")
    console.print("next: create the example data with 'skewless demo', or point skewless.yaml at your database")
    return 0


def print_diff(diff) -> None:  # type: ignore[no-untyped-def]
    if diff.empty:
        console.print("no changes: the registry already holds these definitions")
        return
    rows = [(c.kind, c.name, c.change, c.detail, c.after_apply) for c in diff.changes]
    console.print(table("Plan", ["kind", "name", "change", "detail", "after apply"], rows))
    if diff.breaking:
        console.print(
            f"[yellow]{len(diff.breaking)} change(s) make materialized data stale: run 'skewless materialize' "
            f"for the views marked re-materialize after apply.[/]"
        )
    if diff.orphaning:
        console.print(
            f"[yellow]{len(diff.orphaning)} removed view(s) leave orphaned data (Delta tables, online keys): "
            f"'skewless prune' lists it after apply, and removes it with --yes.[/]"
        )


def cmd_plan(args: argparse.Namespace) -> int:
    from features.contracts import broken_by

    with _store(args) as store:
        plan, diff = store.plan()
        print_diff(diff)
        broken = broken_by(plan, store.registry.contracts())
        kept = store.config.contract_versions > 0
    for name, changed in broken.items():
        if kept:
            console.print(
                f"contract '{name}' keeps being served its trained definitions of {', '.join(changed)} from the old "
                "version, kept materialized beside the new one (online.contract_versions)"
            )
        else:
            console.print(
                f"[yellow]contract '{name}' would break: {', '.join(changed)} would no longer have the definitions "
                "it was trained on; lookups under it would get 409 after apply (online.contract_versions is 0).[/]"
            )
    return 0


def cmd_contract(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.action == "register":
            if not args.manifest or not args.name:
                raise ContractError("register needs a manifest file and --name")
            contract = store.register_contract(args.manifest, name=args.name)
            print(
                f"contract '{contract.name}': {len(contract.fingerprints)} feature(s) of plan version "
                f"{contract.plan_version}, registered by {contract.registered_by}"
            )
            return 0
        if args.action == "retire":
            if not args.name:
                raise ContractError("retire needs --name")
            store.retire_contract(args.name)
            print(f"contract '{args.name}' retired")
            return 0
        contracts = store.registry.contracts()
        live = store.plan_version().plan if store.registry.latest() is not None else None
        kept = store.config.contract_versions > 0
    from features.contracts import broken_by

    broken = broken_by(live, contracts) if live is not None else {}
    listed = [
        {
            "name": c.name,
            "plan_version": c.plan_version,
            "features": len(c.fingerprints),
            "registered": c.registered_at.isoformat(timespec="seconds"),
            "by": c.registered_by,
            "state": _contract_state(c.retired_at is not None, broken.get(c.name), kept),
        }
        for c in contracts.values()
    ]
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    columns = ["name", "plan_version", "features", "registered", "by", "state"]
    console.print(
        table(f"Training contracts ({len(listed)})", columns, [tuple(str(c[k]) for k in columns) for c in listed])
    )
    return 0


def _contract_state(retired: bool, changed: list[str] | None, kept: bool) -> str:
    if retired:
        return "retired"
    if not changed:
        return "served"
    return ("side by side: " if kept else "broken: ") + ", ".join(changed)


def cmd_apply(args: argparse.Namespace) -> int:
    with _store(args) as store:
        result = store.apply()
        print_diff(result.diff)
        if result.created:
            console.print(f"applied plan version {result.version.version} ({result.version.fingerprint})")
        else:
            console.print(f"plan version {result.version.version} is current; nothing written")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    try:
        with _store(args) as store, progress_bars() as progress:
            results = store.materialize(
                args.views or None,
                start=args.start,
                end=args.end,
                progress=progress,
                republish=args.republish,
                skip_checks=args.skip_checks,
            )
    except ChecksFailedError as exc:
        print_failed_checks("Checks failed: not committed, not published", exc.reports)
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 1
    print_materialized(results)
    print_failed_checks("Checks that failed (published)", {r.view: r.checks for r in results if r.checks})
    return 0


def print_failed_checks(title: str, reports: dict[str, CheckReport]) -> None:
    """The failed checks of each view's run as one table (nothing when every check passed)."""
    rows = [
        tuple(escape(cell) for cell in row)
        for view, report in reports.items()
        for row in outcome_rows(report.failed, view)
    ]
    if rows:
        columns = ["view", "check", "level", "observed", "failing rows", "example row"]
        console.print(table(title, columns, rows))
    skipped = [view for view, report in reports.items() if report.skipped and report.blocking]
    if skipped:
        console.print(f"[yellow]--skip-checks: published despite blocking checks: {', '.join(skipped)}[/]")


def print_materialized(results: list[MaterializationResult]) -> None:
    """The runs as a table, then, per view, why the engines asked before the one that ran did not take it."""
    rows = [
        (
            r.view,
            r.rows_read,
            r.rows_landed,
            r.rows_written_offline,
            r.offline_version,
            r.rows_published,
            _online_outcome(r),
            "" if r.ticks_through is None else r.ticks_through.strftime("%Y-%m-%d %H:%M UTC"),
            r.engine,
            f"{r.seconds:.1f}s",
        )
        for r in results
    ]
    console.print(
        table(
            "Materialized",
            [
                "view",
                "rows read",
                "pushed rows landed",
                "rows written (Delta)",
                "Delta version",
                "keys published",
                "online",
                "ticks through",
                "computed in",
                "time",
            ],
            rows,
        )
    )
    for r in results:
        if r.read_reason:
            console.print(f"[dim]{r.view}: read {r.rows_read:,} source row(s): {r.read_reason}[/dim]", highlight=False)
        if r.refusals:
            why = "; ".join(f"not in {engine}: {reason}" for engine, reason in r.refusals)
            console.print(f"[dim]{r.view}: computed in {r.engine} ({why})[/dim]", highlight=False)


def _online_outcome(result: MaterializationResult) -> str:
    """The "online" column: a whole new snapshot, the changed entities in place, or why nothing was published."""
    if result.online_committed:
        return "changed keys" if result.published_changed_only else "new snapshot"
    return "already live" if result.online_current else "no"


def cmd_dataset(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.reproduce:
            store.reproduce_training_dataset(args.reproduce, output=args.out)
            console.print(f"rebuilt the dataset of {args.reproduce}" + (f" into {args.out}" if args.out else ""))
            return 0
        if not (args.entities and args.features and args.out):
            console.print("dataset needs --entities, --features and --out (or --reproduce MANIFEST)")
            return 2
        entities = _read_table(args.entities, args.timestamp_column)
        if ":" in args.features:
            kwargs = {"features": [f.strip() for f in args.features.split(",") if f.strip()]}
        else:
            kwargs = {"feature_service": args.features}
        frame = store.get_training_dataset(entities, timestamp_column=args.timestamp_column, output=args.out, **kwargs)
        console.print(
            f"wrote {len(frame)} rows x {len(frame.columns)} columns to {args.out}, joined in "
            f"{joined_in(args.out)} (manifest: {args.out}.manifest.json)"
        )
        console.print(frame.head(10).to_string())
        if args.plot:
            from features.plots import plot_coverage

            console.print(f"coverage picture: {plot_coverage(frame, args.timestamp_column, args.plot)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        items = list_objects(store.plan_version().plan, args.kind)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    columns = list(dict.fromkeys(key for item in items for key in item))
    rows = [tuple(_cell(item.get(c)) for c in columns) for item in items]
    console.print(table(f"{args.kind.capitalize()} ({len(items)})", columns, rows))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    with _store(args) as store:
        version = store.plan_version()
        described = describe(version.plan, args.name) | {"plan_version": version.version}
        if "storage_fingerprint" in described:  # a stored view: what was materialized, and what is served
            described["last_runs"] = [run_summary(r) for r in store.registry.runs(args.name, failed=True)[-5:]]
            view = version.plan.view(args.name)
            live = store.online_store().live_snapshot(view) if view.online else None
            described["online_snapshot"] = None if live is None else {
                "offline_version": live.watermark,
                "published_at": live.published_at.isoformat(),
                "current_definition": live.storage_fingerprint == view.storage_fingerprint,
            }  # fmt: skip
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    features = described.pop("features") if isinstance(described.get("features"), list) else []
    if features and not isinstance(features[0], dict):  # a service's feature references: one cell
        described["features"], features = features, []
    runs = described.pop("last_runs", None)
    checks = described.pop("checks", None)
    console.print(table(f"{described['kind']} {args.name}", ["", ""], [(k, _cell(v)) for k, v in described.items()]))
    if features:
        console.print(table("Features", list(features[0]), [tuple(_cell(v) for v in f.values()) for f in features]))
    if checks:
        console.print(table("Checks", list(checks[0]), [tuple(escape(str(v)) for v in c.values()) for c in checks]))
    if runs:
        console.print(table("Last runs", list(runs[0]), [tuple(_cell(v) for v in r.values()) for r in runs]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _store(args) as store:
        records = [r for r in store.registry.runs(failed=True) if not args.views or r.view in args.views]
    runs = [{"view": r.view, **run_summary(r)} for r in records[-args.last :]] if args.last > 0 else []
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    # The errors go under the table, whole: a column of them would squeeze the table past a terminal's width.
    columns = [c for c in runs[0] if c != "error"] if runs else ["view"]
    rows = [tuple(_cell(r[c]) for c in columns) for r in runs]
    console.print(table(f"Runs ({len(runs)} of {len(records)})", columns, rows))
    for run in runs:
        if run["error"]:
            console.print(f"[red]{run['outcome']}[/]: {run['view']}, finished {run['finished_at']}: {run['error']}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from features.errors import StatsError
    from features.plots import plot_feature_stats
    from features.run_stats import RunStats, report_rows, served

    with _store(args) as store:
        every = [r for r in store.registry.runs() if r.stats is not None]
    runs = [r for r in every if r.view == args.view]
    if not runs:
        known = ", ".join(sorted({r.view for r in every})) or "none"
        raise StatsError(f"view '{args.view}' has no run with statistics; views that have: {known}")
    number = args.run if args.run is not None else -1
    if not (1 <= number <= len(runs) or -len(runs) <= number <= -1):
        raise StatsError(f"view '{args.view}' has runs 1 to {len(runs)} with statistics (or -1 for the latest)")
    index = number - 1 if number > 0 else len(runs) + number
    run, stats = runs[index], runs[index].stats
    assert stats is not None  # runs without statistics were left out above
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return 0
    previous = served(runs[index - 1].stats) if index > 0 and runs[index - 1].stats is not None else None
    reference = None
    if args.reference:
        try:
            reference = RunStats.from_dict(json.loads(Path(args.reference).read_text())["stats"]).written
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StatsError(f"cannot read the statistics of the training set {args.reference}: {exc}") from exc
    console.print(
        f"view {args.view}: run {index + 1} of {len(runs)}, finished {run.finished_at.isoformat(timespec='seconds')}"
        f", computed in {stats.engine} (quantile rank error {stats.quantile_rank_error:g}, distinct count rsd "
        f"{stats.distinct_rsd:g}; 0: exact)"
    )
    for feature, written in stats.written.items():
        columns = {"written": written}
        if stats.published is not None:
            columns["published"] = stats.published.get(feature)
        if previous is not None:
            columns["previous run"] = previous.get(feature)
        if reference is not None:
            columns["reference"] = reference.get(f"{args.view}__{feature}")
        console.print(table(feature, ["", *columns], report_rows(list(columns.values()))))
        if args.plot:
            curves = {label: s for label, s in columns.items() if s is not None and label != "written"}
            curves = curves or {"written": written}
            out = plot_feature_stats(feature, curves, Path(args.plot) / f"{args.view}__{feature}.png")
            console.print(f"drew {out}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.release:
            ended = store.release(args.view)
            print(
                f"view '{args.view}': "
                + (
                    "not held; nothing to release"
                    if ended is None
                    else f"released ({ended}); the next run publishes the table's latest version"
                )
            )
            return 0
        if not args.list:
            done = store.rollback(args.view, to=args.to)
            print(
                f"view '{args.view}': snapshot {done.to_snapshot} (Delta version {done.offline_version}) is live "
                f"again instead of {done.from_snapshot}; runs are not published until "
                f"'skewless rollback {args.view} --release'"
            )
        kept = store.kept_snapshots(args.view)
        live = store.online_store().live_snapshot(store.plan_version().plan.view(args.view))
    rows = [
        (
            s.version or "?",
            str(s.watermark),
            s.published_at.isoformat(timespec="seconds"),
            ("live" + (f", held: {live.held}" if live.held else "")) if live and s.version == live.version else "",
        )
        for s in kept
    ]
    console.print(table(f"Kept snapshots of {args.view}", ["snapshot", "Delta version", "published at", ""], rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 1 when a view is stale (see :mod:`features.status` for the rules)."""
    from features.status import STATUS_COLUMNS, status_rows, view_statuses

    with _store(args) as store:
        statuses = view_statuses(store, args.views)
    stale = [s for s in statuses if s["stale"]]
    if args.json:
        print(json.dumps(statuses, indent=2))
        return 1 if stale else 0
    console.print(table(f"Status ({len(stale)} of {len(statuses)} stale)", STATUS_COLUMNS, status_rows(statuses)))
    # Reasons and errors go under the table, whole: columns of them would squeeze it past a terminal's width.
    for status in stale:
        console.print(f"[yellow]stale[/]: {status['view']}: {'; '.join(status['stale'])}")
    for status in statuses:
        snapshot = status["online_snapshot"]
        if snapshot is not None and snapshot.get("held"):
            console.print(
                f"[yellow]rolled back[/]: {status['view']}: {snapshot['held']}; runs are not published until "
                f"'skewless rollback {status['view']} --release'"
            )
    for status in statuses:
        failure = status["last_failure"]
        if failure is not None and failure["error"]:
            console.print(f"[red]last failure[/] of {status['view']} ({failure['finished_at']}): {failure['error']}")
    return 1 if stale else 0


def cmd_prune(args: argparse.Namespace) -> int:
    from features.cleanup import plan_prune, prune

    with _store(args) as store:
        plan = plan_prune(store, keep_versions=args.keep_versions, manifest_dirs=[Path(d) for d in args.manifests])
        if args.json:  # no tables or bars: stdout is the JSON document alone
            deleted = prune(store, plan).items if args.yes else None
            print(json.dumps(plan.to_json() | {"deleted": deleted}, indent=2))
            return 0
        print_prune(plan)
        if not args.yes:
            console.print(
                f"dry run: nothing was deleted. 'skewless prune --yes' deletes {len(plan.doomed_tables)} table(s) "
                f"and the keys of {len(plan.doomed_views)} view(s)"
            )
            return 0
        with progress_bars() as progress:
            progress.start("tables", len(plan.doomed_tables))
            progress.start("online views", len(plan.doomed_views))
            done = prune(store, plan, advance=progress.advance)
    console.print(f"deleted: {done.summary()}")
    return 0


def print_prune(plan) -> None:  # type: ignore[no-untyped-def]
    """What prune deletes and keeps, and why: tables, online keys, then the training sets it makes unreproducible."""
    from features.cleanup import human_size, versions_text

    action = {True: "delete", False: "keep"}
    protecting = f"plan version(s) {versions_text(plan.protected)} protect them"
    if plan.tables:
        console.print(
            table(
                f"Delta tables ({protecting})",
                ["view", "table", "size", "action", "why"],
                [(t.view, t.fingerprint, human_size(t.bytes), action[t.delete], t.reason) for t in plan.tables],
            )
        )
    else:
        console.print(f"no Delta tables ({protecting})")
    if plan.online:
        console.print(
            table(
                "Online keys",
                ["view", "keys", "snapshots", "action", "why"],
                [(v.view, v.keys, v.snapshots, action[v.delete], v.reason) for v in plan.online],
            )
        )
    else:
        console.print(plan.online_store or "no online keys")
    for path, version in plan.unreproducible:
        console.print(f"[yellow]would make unreproducible: {path} (a training set of plan version {version})[/]")


def cmd_teardown(args: argparse.Namespace) -> int:
    from features.cleanup import check_teardown, teardown
    from features.config import CONFIG_FILE, RepoConfig
    from features.errors import CleanupError

    root = Path(args.repo).resolve()
    if not (root / CONFIG_FILE).is_file():
        raise CleanupError(f"{root} is not a skewless repository (no {CONFIG_FILE}); nothing was deleted")
    config = RepoConfig.load(root)
    check_teardown(config)
    if not args.yes:
        console.print(
            f"teardown deletes the registry, the Delta tables ({config.resolved_offline_path()}) and the online keys "
            f"of project '{config.project}', and stops its servers. Definitions and {CONFIG_FILE} stay."
        )
        try:
            answer = input(f"type the project name ({config.project}) to confirm: ")
        except EOFError:
            answer = ""
        if answer.strip() != config.project:
            console.print("not confirmed: nothing was deleted")
            return 1
    console.print(f"tearing down '{config.project}':")
    with _store(args) as store:
        deleted = teardown(store, report=lambda item: console.print(f"  - {item}"))
    console.print(f"tore down '{config.project}' ({len(deleted.items)} item(s)); definitions and {CONFIG_FILE} stay")
    return 0


def _cell(value: Any) -> str:
    """A table cell: lists and mappings as short text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict) and set(value) == {"name", "dtype"}:  # a key column
        return f"{value['name']}:{value['dtype']}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items() if v is not None)
    return str(value)


def joined_in(output: str) -> str:
    """Which engine joined the training set written to ``output`` ("Arrow" or "Spark"), from its manifest."""
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    return "Arrow" if manifest.get("joined_in") == "arrow" else "Spark"


def _read_table(path: str, timestamp_column: str):  # type: ignore[no-untyped-def]
    import pandas as pd

    from features.errors import ConfigError

    if not Path(path).exists():
        raise ConfigError(f"entity file {path} does not exist")
    frame = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    if timestamp_column not in frame.columns:
        raise ConfigError(
            f"the entity file has no column '{timestamp_column}' (use --timestamp-column); "
            f"its columns: {', '.join(map(str, frame.columns))}"
        )
    if not pd.api.types.is_datetime64_any_dtype(frame[timestamp_column]):
        # CSV has no timestamp type: parse the text, naive values being UTC like everywhere in skewless.
        frame[timestamp_column] = pd.to_datetime(frame[timestamp_column], utc=True)
    return frame


if __name__ == "__main__":
    sys.exit(main())
