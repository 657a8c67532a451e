"""Helpers of the report tests: hand-made explain output folders and the strings that must survive escaping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

#: A label that would end the JSON <script> element and break HTML if it were not escaped.
NASTY_LABEL = "tripod </script><b>bold</b> & <!-- co"
#: The methods of the real ``gradcam evaluate`` run (the three trivial baselines come with them).
EVALUATED_METHODS = ("gradcam", "counterfactual")
FAILED_ERROR = "cannot identify image file 'broken.jpg' (truncated)"


def copy_run(source: Path, target: Path) -> Path:
    """A copy of an output folder, modification times kept."""
    shutil.copytree(source, target, copy_function=shutil.copy2)
    return target


def fake_run(folder: Path, items: int = 2, size: tuple[int, int] = (400, 300)) -> Path:
    """A small explain output folder made by hand: ``items`` photos, one gradcam heatmap each (a hot square in
    the top-left quarter), relative paths in the manifest as ``gradcam explain`` documents them."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(items):
        photo = folder / f"photo{i}.png"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(photo)
        heat = np.zeros((size[1], size[0]), np.float32)
        heat[: size[1] // 2, : size[0] // 2] = 1.0
        np.save(folder / f"map{i}.npy", heat)
        entries.append({
            "input": str(photo), "size": list(size),
            "predictions": [{"index": 3, "label": "cat & dog", "probability": 0.75}],
            "outputs": [{"method": "gradcam", "target": 3, "label": "cat & dog", "score": 2.5,
                         "overlay": None, "heatmap": f"map{i}.npy", "panel": None, "raw": None}],
        })  # fmt: skip
    manifest = {"model": "fake", "layer": "features", "methods": ["gradcam"], "items": entries, "failed": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
