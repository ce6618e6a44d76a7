"""``skewless audit``: the consistency audit on the command line (the ``skewless.commands`` entry point).

Exit codes: 0 when every feature's mismatch and drift rates are at most ``--max-mismatch``, 1 when one is above,
2 on bad input (no log, an unknown plan version, service or view, a ``--since`` in the future), with nothing
written.
"""

from __future__ import annotations

import argparse
from typing import Any

from features.audit import ROLLED_BACK, AuditResult
from features.audit_report import (
    EXAMPLE_COLUMNS,
    SUMMARY_COLUMNS,
    example_rows,
    summary_rows,
    write_html,
    write_json,
)
from features.console import console, table
from features.errors import AuditInputError


def register(subparsers: Any) -> None:
    """Add ``audit`` to the CLI's subcommands."""
    from features.cli import _repo_arg, _timestamp

    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="compare served feature values with the offline side, value by value"
    )
    _repo_arg(p)
    p.add_argument("names", nargs="*", metavar="SERVICE|VIEW", help="feature services or views (default: all)")
    p.add_argument("--since", type=_timestamp, help="only lookups served since then (ISO date or time, UTC)")
    p.add_argument("--sample", type=int, metavar="N", help="audit N entities per view read from the online store now")
    p.add_argument(
        "--max-mismatch",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="exit 1 when a feature's mismatch (or drift) rate is above RATE, 0..1 (default: 0)",
    )
    p.add_argument("--no-recompute", action="store_true", help="skip recomputing the views from their sources")
    p.add_argument("--html", metavar="FILE", help="also write an HTML report with a plot per feature")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=cmd_audit)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (a number from 0 to 1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--max-mismatch must be from 0 to 1, not {value}")
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    from features.store import FeatureStore

    try:
        with FeatureStore(args.repo) as store:
            result = store.audit(args.names, since=args.since, sample=args.sample, recompute=not args.no_recompute)
    except AuditInputError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return 2
    print_audit(result)
    if args.json:
        write_json(result, args.json)
    if args.html:
        write_html(result, args.html)
    worst = result.worst_rate
    if worst > args.max_mismatch:
        console.print(f"a feature's mismatch rate is {worst:.2%}, above --max-mismatch {args.max_mismatch:.2%}")
        return 1
    return 0


def print_audit(result: AuditResult) -> None:
    if result.origin == "log":
        what = f"{result.lookups:,} logged lookups ({result.entities:,} entities"
    else:
        what = f"{result.entities:,} entities sampled from the online store ({result.lookups} lookups"
    title = f"Audit of {what}, {result.values:,} values) against plan version {result.plan_version}"
    summary = table(title, SUMMARY_COLUMNS, summary_rows(result))
    summary.columns[0].no_wrap = True  # a feature's name is what a reader looks for first
    console.print(summary)
    for feature in result.features:
        if feature.rolled_back:
            console.print(
                f"[yellow]rolled back[/]: {feature.feature}: {feature.rolled_back} value(s) served from a rolled-back "
                f"snapshot, {feature.causes.get(ROLLED_BACK, '')}"
            )
    examples = example_rows(result)
    if examples:
        console.print(table("Examples", EXAMPLE_COLUMNS, examples))
