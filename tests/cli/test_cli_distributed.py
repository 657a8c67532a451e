"""`gradcam explain` under torchrun: 2 CPU processes on gloo shard the inputs and merge one manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gradcam.assets import sample_names, sample_path


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    scratch = cwd / "tmp"  # torchrun's own temporary folders (torchelastic_*) stay inside the test's folder
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "gradcam", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_shard_without_loss_or_duplication_and_resume(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in sample_names():
        shutil.copy(sample_path(name), inputs / name)
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["explain", str(inputs), "--out", str(tmp_path / "out"), "--method", "gradcam", "--quiet",
            "--workers", "0", "--device", "cpu", "--batch-size", "1"]  # fmt: skip
    first = torchrun(args, tmp_path)
    assert first.returncode != 0, first.stdout + first.stderr  # the broken file makes the exit code say so
    assert "4 explained, 0 already done, 1 failed" in first.stdout, first.stdout + first.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    names = [Path(item["input"]).name for item in manifest["items"]]
    assert names == sorted(sample_names())  # every input once, in input order
    assert [Path(f["input"]).name for f in manifest["failed"]] == ["broken.jpg"]
    for item in manifest["items"]:
        assert Path(item["outputs"][0]["overlay"]).is_file()
    second = torchrun(args, tmp_path)
    assert "0 explained, 4 already done, 1 failed" in second.stdout, second.stdout + second.stderr
