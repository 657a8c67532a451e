"""Weights files: reading them safely, unwrapping checkpoints, and loading them strictly into a model.

Every weights file goes through :func:`load_state_dict_file` (``torch.load(weights_only=True)`` or
safetensors), and every state dict goes into a model through :func:`load_into`, which lists each
missing, unexpected or mis-shaped key instead of torch's first failure.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loaded import ModelLoadError

try:  # safetensors is optional; without it .safetensors files are refused before reading
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - depends on the environment
    SafetensorError = OSError  # type: ignore[assignment,misc]

__all__ = ["TORCH_LOAD_ERRORS", "copy_state", "load_into", "load_state_dict_file", "short_reason"]

#: What ``torch.load`` raises on a file it cannot read, by format: a pickle that is not one or holds a
#: forbidden global (UnpicklingError), a broken zip archive (RuntimeError, BadZipFile), a truncated
#: file (EOFError), a missing record (KeyError), bad bytes (ValueError, UnicodeDecodeError), I/O.
TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    KeyError,
    EOFError,
    OSError,
    ValueError,
    zipfile.BadZipFile,
)
_SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "model_ema", "state_dict_ema")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def short_reason(exc: BaseException) -> str:
    """One line out of torch.load's (and similar) long error messages."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    match = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if match:
        return f"it pickles a Python object ({match.group(0)})"
    if "WeightsUnpickler error:" in text:  # skip torch's advice to retry unsafely; keep what the unpickler saw
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ", 1)[0]  # torch's messages go on with advice after the first sentence
    if not isinstance(exc, (RuntimeError, ValueError, OSError)) or not first:
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first[:300]


def unwrap_checkpoint(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict inside ``obj``: a plain state dict, a module, or a checkpoint wrapping one under
    ``state_dict``, ``model``, ... (up to three levels deep)."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 3:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    keys = list(obj)[:8] if isinstance(obj, Mapping) else None
    raise ModelLoadError(
        f"{path} does not hold a state dict: expected a mapping of tensor names to tensors, or a "
        f"checkpoint with one under 'state_dict' or 'model'"
        + (f" (found keys {keys})" if keys is not None else f" (found {type(obj).__name__})"),
        argument="weights",
    )


def _strip_key(key: str, prefix: str) -> str:
    """A ``_metadata`` key without ``prefix`` (the prefix's own module entry becomes the root, '')."""
    return key[len(prefix) :] if key.startswith(prefix) else ("" if key == prefix[:-1] else key)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Drop a 'module.' (DataParallel) or '_orig_mod.' (torch.compile) prefix common to every key.

    The state dict's ``_metadata`` (module versions, which some modules' loaders need) is kept.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    for prefix in _STRIP_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
            if metadata is not None:
                metadata = type(metadata)((_strip_key(k, prefix), v) for k, v in metadata.items())
    return copy_state(out, metadata)


def copy_state(state: Mapping[str, torch.Tensor], metadata: Any = None) -> OrderedDict[str, torch.Tensor]:
    """A shallow copy of a state dict that keeps its ``_metadata`` (module versions)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    metadata = metadata if metadata is not None else getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _load_safetensors(path: Path) -> OrderedDict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(f"{path} is a safetensors file: pip install safetensors", argument="weights") from exc
    try:
        return strip_prefixes(load_file(str(path)))
    except _SAFETENSORS_ERRORS as exc:
        raise ModelLoadError(
            f"{path} is not a safetensors weights file: {short_reason(exc)}", argument="weights"
        ) from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        reason = short_reason(exc)
        if reason.startswith("it pickles a Python object"):
            raise ModelLoadError(
                f"could not read weights from {path} with torch.load(weights_only=True): {reason}. "
                "If it is a checkpoint holding Python objects, re-save just the weights: "
                "torch.save(model.state_dict(), PATH)",
                argument="weights",
            ) from exc
        raise ModelLoadError(
            f"{path} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
            f".safetensors file): torch.load cannot read it ({reason})",
            argument="weights",
        ) from exc


def load_state_dict_file(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a weights file safely (``weights_only``): unwrap checkpoints, strip ``module.`` prefixes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a weights file", argument="weights")
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}", argument="weights")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return strip_prefixes(unwrap_checkpoint(_torch_load(path), path))


def _show(items: list[str]) -> str:
    return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")


def diff_message(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> str | None:
    """Describe missing/unexpected/mis-shaped keys of ``state`` against ``model``; None if it fits."""
    expected = model.state_dict()
    # BatchNorm fills in num_batches_tracked itself when an old file lacks it
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"weights from {source} do not fit the model ({type(model).__name__})"]
    if missing:
        parts.append(f"missing keys: {_show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_show(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_show(shapes)}")
    return "; ".join(parts)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model`` or raise ModelLoadError listing every difference."""
    message = diff_message(model, state, source)
    if message:
        raise ModelLoadError(message, argument="weights")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"weights from {source} do not fit the model ({type(model).__name__}): {exc}", argument="weights"
        ) from exc
