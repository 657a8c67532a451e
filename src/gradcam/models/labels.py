"""ImageNet class names and WordNet synsets, label files, and class lookup by name, synset or index."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["class_index", "imagenet_labels", "imagenet_synsets", "read_labels_file"]

_SYNSET_RE = re.compile(r"^n\d{8}$")


def _read_data_lines(name: str) -> tuple[str, ...]:
    text = resources.files("gradcam.models").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def _imagenet_labels() -> tuple[str, ...]:
    return _read_data_lines("imagenet_classes.txt")


@cache
def _imagenet_synsets() -> tuple[str, ...]:
    return _read_data_lines("imagenet_synsets.txt")


def imagenet_labels() -> list[str]:
    """The 1000 ILSVRC-2012 class names, in model output order (torchvision's spelling)."""
    return list(_imagenet_labels())


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids (``n01440764`` ...), in model output order."""
    return list(_imagenet_synsets())


def read_labels_file(path: str | Path) -> list[str]:
    """Read one label per line (UTF-8); surrounding whitespace and trailing blank lines are dropped."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"labels file {path} is empty")
    return lines


def class_index(name_or_index: int | str, labels: Sequence[str] | None = None) -> int:
    """Resolve a class given as an int, a digit string, a label (case-insensitive) or a synset id.

    ``labels`` defaults to the ImageNet class names; synset ids (``n02123045``) are accepted only when
    ``labels`` has 1000 entries (ImageNet order). Raises ValueError, naming close matches, otherwise.
    """
    labels = list(_imagenet_labels()) if labels is None else list(labels)
    n = len(labels)
    if isinstance(name_or_index, bool):
        raise ValueError(f"not a class: {name_or_index!r}")
    if isinstance(name_or_index, int):
        if 0 <= name_or_index < n:
            return name_or_index
        raise ValueError(f"class index {name_or_index} out of range: the model has {n} classes (0..{n - 1})")
    text = str(name_or_index).strip()
    if re.fullmatch(r"-?\d+", text):
        return class_index(int(text), labels)
    lowered = text.lower()
    for i, label in enumerate(labels):
        if label.lower() == lowered:
            return i
    synsets = _imagenet_synsets()
    if _SYNSET_RE.match(lowered):
        if n == len(synsets) and lowered in synsets:
            return synsets.index(lowered)
        if n != len(synsets):
            raise ValueError(
                f"synset id {text!r} given, but the labels are not ImageNet's 1000 classes ({n} labels)"
            )
        raise ValueError(f"unknown ImageNet synset id {text!r}")
    lowered_labels = {label.lower(): label for label in labels}
    # labels containing the query as a word first ('cat' -> 'tiger cat'), then spelling neighbours
    close = [k for k in lowered_labels if lowered in re.split(r"[\s,/_-]+", k)][:5]
    close += [k for k in lowered_labels if lowered in k and k not in close][: 5 - len(close)]
    close += [
        k for k in difflib.get_close_matches(lowered, list(lowered_labels), n=5, cutoff=0.6) if k not in close
    ][: 5 - len(close)]
    hint = ""
    if close:
        hint = "; did you mean: " + ", ".join(
            f"{lowered_labels[c]!r} ({labels.index(lowered_labels[c])})" for c in close
        )
    raise ValueError(f"unknown class {text!r}: not an index, label or synset id{hint}")
