"""The docs: every Python block runs (docs/ and its sub-folders such as guides/), page by page in order, in a
folder holding the bundled photos; the site (mkdocs + mkdocstrings, the API reference from the docstrings) builds
offline with no warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradcam.assets import sample_names, sample_path

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.md") if "```python" in path.read_text())
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
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


def test_the_site_builds_with_no_warning(tmp_path) -> None:
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra (mkdocs, mkdocstrings-python)")
    root = DOCS.parent
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "from_transforms" in api and "channel_weights" in api  # the reference is made from the docstrings
