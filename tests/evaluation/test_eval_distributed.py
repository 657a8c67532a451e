"""``gradcam evaluate`` under torchrun: 2 CPU processes on gloo evaluate disjoint batches, rank 0 writes
the merged table, and the numbers EQUAL one process's on the same images; a rerun resumes."""

from __future__ import annotations

import json
from collections import Counter

from cli.test_cli_distributed import torchrun
from gradcam.cli import main

ARGS = ["all", "--synthetic", "--images", "8", "--batch-size", "2", "--faithfulness-images", "4", "--step", "1568",
        "--method", "gradcam", "--method", "gradient", "--quiet", "--device", "cpu", "--no-plots"]  # fmt: skip


def measured(out) -> tuple:
    """summary.json's methods without the timings, and per_image.json."""
    methods = json.loads((out / "summary.json").read_text())["methods"]
    methods = [{k: v for k, v in m.items() if not k.startswith("cost")} for m in methods]
    return methods, json.loads((out / "per_image.json").read_text()), json.loads((out / "curves.json").read_text())


def test_two_ranks_merge_to_the_single_process_numbers_and_resume(tmp_path, capsys):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["evaluate", *ARGS, "--out", str(single)]) == 0
    capsys.readouterr()
    first = torchrun(["evaluate", *ARGS, "--out", str(sharded)], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "on 2 processes" in first.stdout and "8 images evaluated, 0 reused" in first.stdout, first.stdout
    assert first.stdout.count("| Grad-CAM |") == 1  # rank 0 alone prints and writes
    assert measured(sharded) == measured(single)
    rows = json.loads((sharded / "per_image.json").read_text())
    counts = Counter((row["image"], row["method"]) for row in rows)
    assert len(counts) == 8 * 5 and set(counts.values()) == {1}  # 8 images x (2 methods + 3 baselines), once each
    assert (sharded / "table.md").read_text().count("| Grad-CAM |") == 1
    # a rerun resumes: a lost batch is evaluated again, the other three are reused
    (sharded / "partial" / "batch-00000004.pkl").unlink()
    second = torchrun(["evaluate", *ARGS, "--out", str(sharded)], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 images evaluated, 6 reused" in second.stdout, second.stdout
    assert measured(sharded) == measured(single)
