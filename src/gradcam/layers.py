"""Finding the layer to explain: by module, by dotted name, or automatically."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError

_POOLING = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
)  # fmt: skip


@dataclass(frozen=True)
class LayerInfo:
    """One module's output as seen in a probe forward pass, in the order the modules finished."""

    name: str
    kind: str
    shape: tuple[int, ...]
    candidate: bool


def close_matches(name: str, model: nn.Module, n: int = 5) -> list[str]:
    """The module names of ``model`` closest to ``name`` (for error messages)."""
    names = [m for m, _ in model.named_modules() if m]
    found = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    return found or [m for m in names if m.startswith(name.split(".")[0])][:n]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Turn a module or a dotted name ("layer4.1", "features.28") into ``(name, module)``."""
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer) if layer else model
        except AttributeError:
            matches = close_matches(layer, model)
            hint = f"; close matches: {', '.join(repr(m) for m in matches)}" if matches else ""
            raise LayerError(
                f"layer {layer!r} not found in {type(model).__name__}{hint} "
                "(`gradcam layers MODEL` or model.named_modules() lists them)"
            ) from None
        return layer, module
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
    raise LayerError(
        f"layer must be an nn.Module, a dotted module name or None; got {type(layer).__name__}"
    )


def probe_layers(model: nn.Module, x: torch.Tensor, forward_kwargs: dict | None = None) -> list[LayerInfo]:
    """Run one forward pass on ``x`` and list every module's tensor output in completion order.

    A module is a *candidate* for Grad-CAM when its output is a map with the input's layout, (B, K, u, v)
    for images ((B, K, l) for signals, (B, K, t, u, v) for videos), with more than one position, that was
    not produced by a pooling module (a container whose output is its last
    pooling child's output inherits that). Tensors are identified by object, so an in-place ReLU
    that returns its input is a candidate like the convolution before it.
    """
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    producer: dict[int, nn.Module] = {}
    keep_alive: list[torch.Tensor] = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                producer.setdefault(id(output), module)
                keep_alive.append(output)
                records.append((name, module, output))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x, **(forward_kwargs or {}))
    finally:
        for handle in handles:
            handle.remove()
    infos = []
    for name, module, output in records:
        spatial = output.dim() == x.dim() and output.shape[0] == x.shape[0] and output.shape[2:].numel() > 1
        pooled = isinstance(producer.get(id(output), module), _POOLING)
        infos.append(LayerInfo(name, type(module).__name__, tuple(output.shape), spatial and not pooled))
    return infos


def choose_layer(infos: list[LayerInfo], model: nn.Module) -> str:
    """The automatic choice: the last candidate to finish before the spatial dims are pooled away."""
    candidates = [info.name for info in infos if info.candidate]
    if not candidates:
        raise LayerError(
            f"no layer of {type(model).__name__} outputs a (B, K, u, v) feature map with u*v > 1; "
            "pass layer= explicitly (token outputs need a reshape to a grid)"
        )
    return candidates[-1]
