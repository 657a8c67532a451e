"""The README's Python quick start runs as written (on a bundled photo) and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gradcam.assets import sample_path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(monkeypatch, tmp_path):
    code = re.search(r"## Python quick start\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(sample_path("chelsea_cat").read_bytes())
    scope: dict = {}
    exec(compile(code, "README quick start", "exec"), scope)
    e, heat = scope["e"], scope["heat"]
    assert e.layer == "bn2"
    assert e.classes[0, 0] in (281, 282, 285)
    assert heat.shape == (300, 451) and float(heat.max()) <= 1.0
    assert torch.equal(e.classes[0], e.logits[0].topk(3).indices)
