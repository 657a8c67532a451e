"""Activation capture, the guided-ReLU backward rule and the model-state guard.

Every hook registered here lives for exactly one ``with`` block and is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import LayerError

_aten = torch.ops.aten


@contextmanager
def model_guard(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run a block with ``model`` in eval mode and restore every module's ``training`` flag after.

    Parameters' ``requires_grad`` and ``.grad`` are never touched by the explainers (they
    differentiate with ``torch.autograd.grad`` with respect to captured tensors only), so the only
    state to restore is the per-module training flag. Eval mode keeps batch-norm statistics and
    dropout fixed, so explaining never changes the model's buffers.
    """
    modules = list(model.modules())
    flags = [module.training for module in modules]
    try:
        if eval_mode and any(flags):  # a model already in eval mode is left alone (no eval() call)
            model.eval()
        yield
    finally:
        for module, flag in zip(modules, flags):
            if module.training != flag:  # nn.Module.__setattr__ is slow: only write what changed
                module.training = flag


@dataclass
class Capture:
    """What a capture hook saw: the layer output as a tensor to differentiate with respect to."""

    name: str
    activations: torch.Tensor | None = None
    calls: int = 0
    shapes: list[tuple[int, ...]] = field(default_factory=list)


@contextmanager
def capture_layer(layer: nn.Module, name: str, record_graph: bool) -> Iterator[Capture]:
    """Capture ``layer``'s output during one forward pass.

    The hook keeps ``A`` (graph-free) and hands a *clone* downstream, so an in-place op after the
    layer (``ReLU(inplace=True)``, DenseNet's ``F.relu(..., inplace=True)``) cannot change ``A``.
    With ``record_graph`` the forward is expected to run under ``torch.no_grad()``: the hook makes
    ``A`` a leaf that requires grad and switches grad mode on, so autograd records only the part of
    the network after the layer and ``torch.autograd.grad(y, A)`` stops there. The mode switch is
    undone by the caller's ``no_grad`` block on exit. A module called several times keeps its last
    call's output.
    """
    capture = Capture(name)

    def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"layer '{name}' ({type(module).__name__}) returns {type(output).__name__}, "
                "not a tensor; choose a layer whose output is a (B, K, u, v) feature map"
            )
        capture.calls += 1
        capture.shapes.append(tuple(output.shape))
        activations = output.detach()
        if record_graph:
            activations.requires_grad_(True)
            torch.set_grad_enabled(True)
        capture.activations = activations
        return activations.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


class _GuidedReLUBackward(TorchDispatchMode):
    """Guided Backpropagation's rule, applied to every ReLU's backward at the aten level.

    ReLU's derivative is ``threshold_backward(g, x, 0) = g * [x > 0]``; the guided rule is
    ``g_in = max(g, 0) * [x > 0]``. ReLU6 (``hardtanh`` with ``min_val = 0``) gets the same
    treatment, ``max(g, 0) * [0 < x < 6]``. Working on the backward ops catches every way a model
    can call a ReLU: ``nn.ReLU`` (in place or not, reused), ``F.relu``, ``torch.relu``, ``relu_``,
    ``Tensor.relu``, ``nn.ReLU6`` and ``F.relu6``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rectified = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _aten.threshold_backward.default and args[2] == 0:
            self.rectified += 1
            return func(args[0].clamp(min=0), *args[1:], **kwargs)
        if func is _aten.hardtanh_backward.default and args[2] == 0:
            self.rectified += 1
            return func(args[0].clamp(min=0), *args[1:], **kwargs)
        return func(*args, **kwargs)


@contextmanager
def guided_relu_backward() -> Iterator[_GuidedReLUBackward]:
    """Within this block every ReLU backward computed by autograd follows the guided rule."""
    mode = _GuidedReLUBackward()
    with mode:
        yield mode
