"""The ranking tables of docs/evaluation.md from ``gradcam evaluate`` runs' ``summary.json`` files.

    python scripts/evaluation_tables.py gradcam-eval/summary.json [more/summary.json ...]

Rows of several runs over the same images (same settings) are joined, a method's first row kept; each run's
cost column is its own paired measurement (forward passes), so rows of different runs stay comparable. Two
tables: localization and deletion / insertion; then sanity, ROAD, robustness and complexity. The cells are
formatted as ``table.md`` formats them (:func:`gradcam.evaluation.report.table_row`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradcam.evaluation.report import table_head, table_row

TABLES = (
    (
        "max_box_accuracy", "best_threshold", "pointing", "pointing_two_object", "points_at_other", "deletion_auc",
        "insertion_auc", "average_drop", "cost",
    ),
    (
        "mprt_ssim", "mprt_spearman", "random_logit_ssim", "sanity", "road_morf", "road_lerf", "road_gap",
        "max_sensitivity", "avg_sensitivity", "sparseness", "entropy", "cost",
    ),
)  # fmt: skip


def joined_rows(paths: list[Path]) -> list[dict]:
    """Method rows of every file, the first row of a method kept; baselines after the methods."""
    rows: dict[str, dict] = {}
    settings = None
    for path in paths:
        summary = json.loads(path.read_text())
        own = {key: value for key, value in summary["settings"].items() if key not in ("methods", "baselines")}
        if settings is not None and own != settings:
            raise SystemExit(f"{path}: other settings than {paths[0]}; its rows would not be comparable")
        settings = own
        for row in summary["methods"]:
            rows.setdefault(row["method"], row)
    ordered = list(rows.values())
    return [r for r in ordered if not r["baseline"]] + [r for r in ordered if r["baseline"]]


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    return "\n".join([*table_head(columns), *(table_row(row["title"], row, columns) for row in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="summary.json files of runs with the same settings")
    args = parser.parse_args()
    rows = joined_rows(args.summaries)
    print("\n\n".join(table(rows, columns) for columns in TABLES))


if __name__ == "__main__":
    main()
