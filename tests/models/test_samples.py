"""Bundled sample photos: files, licences, annotations, and the default model gets every one right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from gradcam.assets import sample_annotations, sample_names, sample_path
from gradcam.models import LoadedModel, imagenet_labels, load_model

try:
    from gradcam.imaging.geometry import preprocess as _preprocess
except ImportError:  # pragma: no cover - imaging not there yet
    _preprocess = None


def _to_tensor(image: Image.Image, loaded: LoadedModel) -> torch.Tensor:
    if _preprocess is not None:
        return _preprocess(image, loaded.preprocess)[0]
    import numpy as np

    cfg = loaded.preprocess
    image = image.convert("RGB")
    w, h = image.size
    scale = cfg.resize_size / min(w, h)
    size = (cfg.resize_size, int(h * scale)) if w <= h else (int(w * scale), cfg.resize_size)
    resample = {"bicubic": Image.Resampling.BICUBIC}.get(cfg.interpolation, Image.Resampling.BILINEAR)
    image = image.resize(size, resample)
    left, top = round((size[0] - cfg.input_size) / 2), round((size[1] - cfg.input_size) / 2)
    image = image.crop((left, top, left + cfg.input_size, top + cfg.input_size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    return load_model()


def test_sample_files() -> None:
    names = sample_names()
    assert 3 <= len(names) <= 5
    assert set(names) == set(sample_annotations())
    licences = (sample_path(names[0]).parent / "LICENSES.md").read_text(encoding="utf-8")
    for name in names:
        path = sample_path(name)
        assert path == sample_path(Path(name).stem)
        assert path.suffix == ".jpg" and path.stat().st_size < 120_000
        with Image.open(path) as image:
            assert max(image.size) <= 512
            assert list(image.size) == sample_annotations()[name]["size"]
        assert f"`{name}`" in licences
    with pytest.raises(ValueError, match="unknown sample 'nope'; available: "):
        sample_path("nope")


def test_annotations_are_consistent() -> None:
    labels = imagenet_labels()
    for name, ann in sample_annotations().items():
        w, h = ann["size"]
        x0, y0, x1, y1 = ann["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, name
        assert ann["class_index"] in ann["accepted_indices"]
        assert labels[ann["class_index"]] == ann["label"]
        assert [labels[i] for i in ann["accepted_indices"]] == ann["accepted_labels"]


def test_default_model_classifies_every_sample(default_model: LoadedModel) -> None:
    annotations = sample_annotations()
    names = sorted(annotations)
    with torch.no_grad():
        batch = torch.stack([_to_tensor(Image.open(sample_path(n)), default_model) for n in names])
        probs = default_model.model(batch).softmax(-1)
    for name, p in zip(names, probs, strict=True):
        top1 = int(p.argmax())
        accepted = annotations[name]["accepted_indices"]
        assert top1 in accepted, f"{name}: top-1 {default_model.labels[top1]!r} ({p[top1]:.3f})"
        assert float(p[accepted].sum()) > 0.4, name
