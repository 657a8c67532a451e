"""Model specs: which source a ``load_model`` spec string names, and what it names there.

========================  ==============  ======================================
spec                      scheme          target
========================  ==============  ======================================
``efficientnet_lite0``    ``builtin``     the spec (also ``default``, ...)
``torchvision:NAME``      ``torchvision`` ``NAME``
``timm:NAME``             ``timm``        ``NAME``
``hf:FOLDER``             ``hf``          ``FOLDER``
an existing file          ``serialized``  the path (TorchScript or ``.pt2``)
``module:attr``           ``factory``     the spec (``file.py:attr`` too)
========================  ==============  ======================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .loaded import ModelLoadError

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_ALIASES = frozenset({"efficientnet_lite0", "efficientnet-lite0", "default", "tf_efficientnet_lite0"})
#: Schemes written as a ``scheme:`` prefix of the spec.
PREFIX_SCHEMES = ("torchvision", "timm", "hf")
_MODEL_FILE_SUFFIXES = {".pt", ".pth", ".ts", ".jit", ".torchscript", ".zip", ".pt2"}
_ATTR = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``scheme`` picks the loader, ``target`` is what that loader loads."""

    scheme: str
    target: str


def _is_factory(spec: str) -> bool:
    """``module.path:attr`` or ``file.py:attr`` (a Windows drive letter ``C:`` is not a module)."""
    target, _, attr = spec.rpartition(":")
    return bool(target) and _ATTR.fullmatch(attr) is not None and re.fullmatch(r"[A-Za-z]", target) is None


def parse_spec(spec: str) -> ModelSpec:
    """The scheme and target of ``spec`` (see the module's table); ModelLoadError when it names nothing."""
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError("empty model spec")
    if spec.lower() in DEFAULT_ALIASES:
        return ModelSpec("builtin", spec)
    for scheme in PREFIX_SCHEMES:
        if spec.startswith(f"{scheme}:"):
            return ModelSpec(scheme, spec.split(":", 1)[1].strip())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".py":
        return ModelSpec("serialized", str(path))
    if ":" in spec and _is_factory(spec):
        return ModelSpec("factory", spec)
    if path.suffix in _MODEL_FILE_SUFFIXES:
        raise ModelLoadError(f"model file not found: {path}")
    raise ModelLoadError(
        f"unknown model spec {spec!r}: use efficientnet_lite0, torchvision:NAME, timm:NAME, a TorchScript or "
        ".pt2 file, or module.path:factory / file.py:factory. Run `gradcam models` to list models."
    )
