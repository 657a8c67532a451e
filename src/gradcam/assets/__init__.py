"""Bundled sample photos (public domain / CC0) with hand-labelled boxes and expected ImageNet classes."""

from __future__ import annotations

import atexit
import json
from contextlib import ExitStack
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["sample_annotations", "sample_names", "sample_path"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_files = ExitStack()
atexit.register(_files.close)


def _samples_dir() -> Any:
    return resources.files("gradcam.assets").joinpath("samples")


def _as_path(resource: Any) -> Path:
    """A real filesystem path for a package resource (extracted to a temp file when zipped)."""
    if isinstance(resource, Path):
        return resource
    return Path(_files.enter_context(resources.as_file(resource)))


def sample_names() -> list[str]:
    """File names of the bundled sample photos, sorted (e.g. ``['cameraman.jpg', ...]``)."""
    return sorted(
        entry.name for entry in _samples_dir().iterdir() if entry.name.lower().endswith(_IMAGE_SUFFIXES)
    )


def sample_path(name: str) -> Path:
    """Path of a bundled sample, given its file name with or without extension (``'coffee'``)."""
    names = sample_names()
    matches = [n for n in names if n == name or n.rsplit(".", 1)[0] == name]
    if not matches:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(names)}")
    return _as_path(_samples_dir().joinpath(matches[0]))


@lru_cache(maxsize=1)
def _annotations() -> dict[str, Any]:
    return json.loads(_samples_dir().joinpath("samples.json").read_text(encoding="utf-8"))


def sample_annotations() -> dict[str, dict[str, Any]]:
    """Per sample file name: ``class_index``, ``label``, ``accepted_indices``, ``accepted_labels``,
    ``box`` ([x0, y0, x1, y1] in original pixels, x1/y1 exclusive), ``size`` [W, H] and ``description``.
    """
    return json.loads(json.dumps(_annotations()["samples"]))  # a deep copy callers may modify
