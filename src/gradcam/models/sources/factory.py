"""``module.path:attr`` / ``file.py:attr``: a user callable returning an ``nn.Module`` or a LoadedModel."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..loaded import IMAGENET_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, finish
from ..weights import load_into, load_state_dict_file


def _import_file(file: Path) -> Any:
    if not file.is_file():
        raise ModelLoadError(f"Python file not found: {file}")
    mod_name = f"_gradcam_user_model_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    # The user's file may raise anything while it runs; only this call is covered, and what it raised
    # becomes the ModelLoadError's cause.
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise ModelLoadError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    return module


def import_factory(target: str, attr: str) -> Any:
    """Import ``module.path`` or ``file.py`` and return its attribute ``attr`` (dots allowed)."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target).expanduser())
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {target!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _call(factory: Any, spec: str, attr: str) -> Any:
    if not callable(factory):
        raise ModelLoadError(f"{spec}: {attr!r} is not callable")
    try:
        return factory()
    # The factory is the user's code and may raise anything; only the call is covered, and what it
    # raised becomes the ModelLoadError's cause.
    except Exception as exc:
        raise ModelLoadError(f"{spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from exc


def load(target: str, request: LoadRequest) -> LoadedModel:
    """Call the factory ``target`` names; load ``request.weights`` into what it returns."""
    module_name, _, attr = target.rpartition(":")
    result = _call(import_factory(module_name, attr), target, attr)
    if isinstance(result, LoadedModel):
        if request.weights is not None:
            load_into(result.model, load_state_dict_file(request.weights), str(request.weights))
        return finish(
            result.model, result.name or target, result.preprocess, request, labels=result.labels,
            default_layer=result.default_layer, task=result.task, text_encoder=result.text_encoder,
        )  # fmt: skip
    if not isinstance(result, nn.Module):
        raise ModelLoadError(
            f"{target}: {attr}() returned {type(result).__name__}, expected a torch.nn.Module or a LoadedModel"
        )
    if request.weights is not None:
        load_into(result, load_state_dict_file(request.weights), str(request.weights))
    return finish(result, target, IMAGENET_PREPROCESS, request)
