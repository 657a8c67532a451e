"""``scripts/evaluation_tables.py``: the docs' ranking tables joined from several runs' summary.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "evaluation_tables.py"


def _summary(path: Path, rows: list[dict], seed: int = 0) -> Path:
    path.write_text(json.dumps({"settings": {"seed": seed, "methods": None}, "methods": rows}))
    return path


def _run(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)


def test_rows_of_two_runs_are_joined_first_row_kept_baselines_last(tmp_path):
    first = _summary(tmp_path / "a.json", [
        {"method": "gradcam", "title": "Grad-CAM", "baseline": False, "pointing": 99.66, "cost": 1.44,
         "mprt_ssim": 0.2759, "sanity": "pass"},
        {"method": "center", "title": "Baseline: centre box", "baseline": True, "pointing": 28.5, "sanity": "FAIL"},
    ])  # fmt: skip
    second = _summary(tmp_path / "b.json", [
        {"method": "gradcam", "title": "Grad-CAM", "baseline": False, "pointing": 0.0},
        {"method": "gradcam+aug-smooth", "title": "Grad-CAM + test-time augmentation", "baseline": False,
         "pointing": 98.04, "sanity": "partial", "mprt_ssim": float("nan")},
    ])  # fmt: skip
    done = _run(first, second)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Method")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| Grad-CAM", "| Grad-CAM + test-time augmentation", "| Baseline: centre box"
    ] * 2  # fmt: skip
    assert rows[0].startswith("| Grad-CAM | – | – | 99.7 |") and rows[0].endswith("| 1.4 |")
    assert rows[3] == "| Grad-CAM | 0.276 | – | – | pass | – | – | – | – | – | – | – | 1.4 |"
    assert "| *partial* |" in rows[4] and "| **FAIL** |" in rows[5] and rows[4].startswith("| Grad-CAM + test-time")


def test_runs_with_other_settings_are_refused(tmp_path):
    row = {"method": "gradcam", "title": "Grad-CAM", "baseline": False}
    done = _run(_summary(tmp_path / "a.json", [row]), _summary(tmp_path / "b.json", [row], seed=1))
    assert done.returncode == 1 and "other settings than" in done.stderr
