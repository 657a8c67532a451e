"""``gradcam report OUT``: one self-contained HTML page (OUT/report.html) to browse an explain or evaluate run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import CLIError, RunError

COMMAND = "report"
HELP = "write OUT/report.html, a page to browse what gradcam explain and/or gradcam evaluate wrote in OUT"
EPILOG = (
    "Reads OUT/manifest.json (explain) and OUT/summary.json, curves.json, examples/ (evaluate); thumbnails go to "
    "OUT/report_files/ and are reused by a rerun. Exit code 1 when OUT holds neither file or one cannot be read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the --out folder of gradcam explain or gradcam evaluate")
    parser.add_argument("--quiet", action="store_true", help="print nothing when done")


def write_html(out: str | Path, quiet: bool = False) -> Path:
    """Write OUT/report.html and say so on stdout (unless ``quiet``); RunError (exit 1) when it cannot be."""
    from ..report import ReportError, write_html_report

    try:
        summary = write_html_report(out)
    except ReportError as error:
        raise RunError(str(error)) from None
    except OSError as error:
        raise RunError(f"cannot write the report in {out}: {error}") from None
    if not quiet:
        parts = []
        if summary.items or summary.failed:
            parts.append(f"{summary.items} images, {summary.failed} failed")
            parts.append(f"thumbnails: {summary.made} made, {summary.reused} reused")
        if summary.evaluation:
            parts.append("evaluation tables, curves and examples")
        print(f"report: {summary.path} ({'; '.join(parts)})")
    if summary.missing:
        print(
            f"gradcam report: {summary.missing} photos or maps could not be read; they are left out of the page",
            file=sys.stderr,
        )
    return summary.path


def run(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"{args.out} is a file; expected the --out folder of gradcam explain or gradcam evaluate")
    write_html(args.out, args.quiet)
    return 0
