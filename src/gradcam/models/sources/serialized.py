"""A model file given as the spec: a TorchScript archive or a torch.export ``.pt2`` program."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcam.imaging.geometry import PreprocessConfig

from ..loaded import IMAGENET_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, finish
from ..weights import TORCH_LOAD_ERRORS, load_into, load_state_dict_file, short_reason

# torch.jit.load / torch.export.load raise what torch.load does, and assertion or type errors on
# archives whose records do not describe a program.
_ARCHIVE_ERRORS = (*TORCH_LOAD_ERRORS, AssertionError, NotImplementedError, TypeError)
# What torch.export.unflatten raises on a program it cannot rebuild as nested modules.
_UNFLATTEN_ERRORS = (RuntimeError, ValueError, AssertionError, NotImplementedError, KeyError, TypeError)


def export_preprocess(program: Any) -> PreprocessConfig:
    """ImageNet preprocessing, at the input size an exported program was traced with when it is fixed."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                shape = node.meta["val"].shape
                if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]) and shape[2] == shape[3]:
                    size = int(shape[2])
                    return replace(IMAGENET_PREPROCESS, input_size=size, resize_size=round(size * 256 / 224))
                break
    except (AttributeError, KeyError, TypeError):  # no graph signature or no traced shapes: the default
        pass
    return IMAGENET_PREPROCESS


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Silence the traceback torch.export.load logs (as warnings) before raising on a file it cannot read.

    The exception it raises is kept and reported; only the duplicate log lines on stderr go.
    """
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_jit(path: Path) -> tuple[nn.Module, PreprocessConfig]:
    with warnings.catch_warnings():  # torch.jit is deprecated but still the format people have
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu"), IMAGENET_PREPROCESS


def _load_export(path: Path) -> tuple[nn.Module, PreprocessConfig]:
    with _quiet_torch_export():
        program = torch.export.load(str(path))
    try:  # keeps submodule names (layer4, ...) so Grad-CAM can hook them
        model = torch.export.unflatten(program)
    except _UNFLATTEN_ERRORS:  # a flat module still runs; only the nested names are lost
        model = program.module()
    return model, export_preprocess(program)


def _weights_hint(path: Path) -> str:
    """Advice when ``path`` is a weights file rather than a model."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS:  # not a weights file either: the caller's message says what was expected
        return " Expected a model saved with torch.jit.save or torch.export.save."
    if isinstance(obj, Mapping):
        return (
            " It looks like a weights file: give the architecture as the model spec "
            "(e.g. torchvision:resnet50) and this file as --weights."
        )
    return " Expected a model saved with torch.jit.save or torch.export.save."


def load(target: str, request: LoadRequest) -> LoadedModel:
    """The TorchScript archive or torch.export ``.pt2`` file at ``target`` (``.pt2`` tried as export first)."""
    path = Path(target)
    readers = {"torch.jit.load": _load_jit, "torch.export.load": _load_export}
    order = ("torch.export.load", "torch.jit.load") if path.suffix == ".pt2" else tuple(readers)
    errors: list[str] = []
    last: BaseException | None = None
    for reader in order:
        try:
            model, preprocess = readers[reader](path)
            break
        except _ARCHIVE_ERRORS as exc:
            errors.append(f"{reader}: {short_reason(exc)}")
            last = exc
    else:
        raise ModelLoadError(
            f"{path} is neither a TorchScript archive nor a torch.export .pt2 file "
            f"({'; '.join(errors)}).{_weights_hint(path)}"
        ) from last
    if request.weights is not None:
        load_into(model, load_state_dict_file(request.weights), str(request.weights))
    return finish(model, str(path), preprocess, request)
