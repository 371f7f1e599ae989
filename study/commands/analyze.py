"""`nctune analyze NAME`: does collapse predict transfer? Writes the study's report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune analyze` to the CLI."""
    p = sub.add_parser(
        "analyze", help="correlate collapse with transfer across a study's trials; write a report",
        description="Load a study's runs from MLflow, correlate collapse (CDNV, NC1) with "
        "few-shot transfer across trials, measure regularization effects and the CDNV bound, "
        "and write a report with figures; the report and headline numbers are also logged to "
        "the study's parent MLflow run.")
    p.add_argument("name", help="study name")
    p.add_argument("--format", choices=["html", "md"], default="html",
                   help="report format (default: html, self-contained)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<cwd>/nctune-runs/mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: nctune)")
    p.add_argument("--out", default=None, type=Path,
                   help="output folder (default: nctune-runs/studies/NAME/report/)")
    p.add_argument("--probe", default=None, metavar="PROBE",
                   help="answer the question for a probe (`nctune probe`): its few-shot "
                        "accuracy on the new domain as the transfer target, side by side with "
                        "the in-domain answer (report in .../report/probe-PROBE/)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Write the study's analysis report and print its verdict and where it is."""
    from analysis.crosstrial.report import analyze

    if args.probe is not None:
        return cmd_analyze_probe(args)
    report = analyze(args.name, args.tracking_uri, args.out, fmt=args.format,
                     experiment=args.experiment)
    for line in report.verdict:
        print(f"  {line}")
    print(f"report: {report.path}")
    if report.log_error:
        print(f"nctune: warning: {report.log_error}", file=sys.stderr)
    if report.too_few:
        # The report is written (it says why); the command still fails so scripts notice.
        raise InputError(f"study {args.name!r}: no correlation: {report.too_few}; "
                         f"see {report.path}")
    return 0


def cmd_analyze_probe(args: argparse.Namespace) -> int:
    """The probe's report: does collapse on the source classes predict transfer there?"""
    from analysis.contract import check_name_part
    from analysis.crosstrial.probe_report import analyze_probe

    name = check_name_part("--probe", args.probe)
    rep = analyze_probe(args.name, name, args.tracking_uri,
                        args.out / f"probe-{name}" if args.out else None,
                        experiment=args.experiment)
    for line in rep.verdict:
        print(f"  {line}")
    print(f"report: {rep.path}")
    if rep.log_error:
        print(f"nctune: warning: {rep.log_error}", file=sys.stderr)
    return 0
