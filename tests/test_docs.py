"""Every Python block of the docs runs, page by page in order, in a folder holding the bundled photos."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradcam.assets import sample_names, sample_path

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(path for path in DOCS.glob("*.md") if "```python" in path.read_text())
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_runs(page: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in sample_names():  # cat.jpg, coffee.jpg, ... as the docs call them
        source = sample_path(name)
        (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / "cat.jpg").write_bytes(sample_path("chelsea_cat").read_bytes())
    blocks = BLOCK.findall(page.read_text())
    assert blocks, page
    scope: dict = {"__name__": "__docs__"}
    for number, code in enumerate(blocks, 1):
        exec(compile(code, f"{page.name} block {number}", "exec"), scope)
