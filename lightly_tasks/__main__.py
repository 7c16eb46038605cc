"""Command line: ``python -m lightly_tasks summary <artifacts_root>/<dataset>`` prints the latest run's summary."""

from __future__ import annotations

import argparse
import sys

from lightly_tasks.report import format_summary, latest_report
from lightly_tasks.storage import location_from_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightly_tasks")
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="print the summary of the newest run of a dataset")
    summary.add_argument("dataset_uri", help="<artifacts_root>/<dataset>, e.g. file:///tmp/artifacts/demo")
    args = parser.parse_args(argv)
    if args.command == "summary":
        report_uri, report = latest_report(location_from_uri(args.dataset_uri))
        print(format_summary(report, report_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
