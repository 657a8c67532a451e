"""Activation capture, the guided-ReLU backward rule and the model-state guard.

Every hook registered here lives for exactly one ``with`` block and is removed in ``finally``.

Concurrency: several threads may explain one shared model at the same time. Every hook registered
through :func:`forward_hook` acts only on forward passes run by the thread that registered it (a
module's hooks are shared by all threads, so without this a call would capture another thread's
activations), grad mode and dispatch modes are thread-local in torch, and :func:`model_guard` counts
the calls in flight on a model so that the training flags are restored once, by the last to leave.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import LayerError, MethodError

_aten = torch.ops.aten


@dataclass
class _Guarded:
    """A model inside :func:`model_guard`: the calls in flight and the flags to restore after the last."""

    modules: list[nn.Module]
    flags: list[bool]
    eval_mode: bool
    calls: int = 0


_guard_lock = threading.Lock()
_guarded: dict[int, _Guarded] = {}


@contextmanager
def model_guard(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run a block with ``model`` in eval mode and restore every module's ``training`` flag after.

    Parameters' ``requires_grad`` and ``.grad`` are never touched by the explainers (they
    differentiate with ``torch.autograd.grad`` with respect to captured tensors only), so the only
    state to restore is the per-module training flag. Eval mode keeps batch-norm statistics and
    dropout fixed, so explaining never changes the model's buffers.

    Nested and concurrent guards of one model (other threads) share one record: the first sets the
    mode, the last restores the flags it found. A guard that asks for eval mode while another
    call in flight runs the model in training mode (``eval_mode=False``) is an error: the two calls
    cannot both have the mode they asked for.
    """
    key = id(model)
    with _guard_lock:
        state = _guarded.get(key)
        if state is None:
            modules = list(model.modules())
            state = _guarded[key] = _Guarded(modules, [module.training for module in modules], eval_mode)
            if eval_mode and any(state.flags):  # a model already in eval mode is left alone (no eval() call)
                model.eval()
        elif eval_mode and not state.eval_mode and any(module.training for module in state.modules):
            raise MethodError(
                f"{type(model).__name__} is being explained with eval_mode=False by another call in flight, so it "
                "is in training mode; this call asks for eval mode: use the same eval_mode for concurrent calls"
            )
        state.calls += 1
    try:
        yield
    finally:
        with _guard_lock:
            state.calls -= 1
            if state.calls == 0:
                del _guarded[key]
                for module, flag in zip(state.modules, state.flags):
                    if module.training != flag:  # nn.Module.__setattr__ is slow: only write what changed
                        module.training = flag


ForwardHook = Callable[[nn.Module, tuple, object], object]


@contextmanager
def forward_hook(module: nn.Module, hook: ForwardHook) -> Iterator[None]:
    """Register ``hook`` as a forward hook of ``module`` for this block, acting only on the forward
    passes of the calling thread (another thread's forward of the same module passes through)."""
    owner = threading.get_ident()

    def scoped(module: nn.Module, inputs: tuple, output: object) -> object:
        if threading.get_ident() != owner:
            return None
        return hook(module, inputs, output)

    handle = module.register_forward_hook(scoped)
    try:
        yield
    finally:
        handle.remove()


def _inside_reentrant_checkpoint() -> bool:
    """Whether the caller runs inside ``torch.utils.checkpoint(..., use_reentrant=True)``'s forward, which
    runs its segment under ``no_grad`` and keeps no graph of it (found by its frame on the stack)."""
    checkpoint = getattr(torch.utils, "checkpoint", None)
    function = getattr(checkpoint, "CheckpointFunction", None)
    if function is None:
        return False
    code = function.forward.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


REENTRANT_CHECKPOINT_FIX = (
    "use torch.utils.checkpoint(..., use_reentrant=False) (torch's recommended mode), with which Grad-CAM works"
)


def reentrant_checkpoint_error(error: RuntimeError, what: str) -> MethodError | None:
    """The error to raise when ``torch.autograd.grad`` failed because the model uses reentrant checkpointing
    after the captured tensor (``what``: the layer or the input), or None for any other failure."""
    if "use_reentrant" not in str(error) and "Checkpointing is not compatible" not in str(error):
        return None
    return MethodError(
        f"the model calls torch.utils.checkpoint(..., use_reentrant=True) after {what}; reentrant checkpointing "
        "cannot be differentiated with torch.autograd.grad, which gradcam uses so that no parameter gradient is "
        f"computed; {REENTRANT_CHECKPOINT_FIX}"
    )


@dataclass
class Capture:
    """What a capture hook saw: the layer output as a tensor to differentiate with respect to."""

    name: str
    activations: torch.Tensor | None = None
    calls: int = 0
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    in_reentrant_checkpoint: bool = False  # the layer ran inside a use_reentrant=True checkpoint (no graph kept)


@contextmanager
def capture_layer(layer: nn.Module, name: str, record_graph: bool) -> Iterator[Capture]:
    """Capture ``layer``'s output during one forward pass.

    The hook keeps ``A`` (graph-free) and hands a *clone* downstream, so an in-place op after the
    layer (``ReLU(inplace=True)``, DenseNet's ``F.relu(..., inplace=True)``) cannot change ``A``.
    With ``record_graph`` the forward is expected to run under ``torch.no_grad()``: the hook makes
    ``A`` a leaf that requires grad and switches grad mode on, so autograd records only the part of
    the network after the layer and ``torch.autograd.grad(y, A)`` stops there. The mode switch is
    undone by the caller's ``no_grad`` block on exit. A module called several times keeps its last
    call's output. Only the calling thread's forward passes are captured.
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
            capture.in_reentrant_checkpoint = _inside_reentrant_checkpoint()
        capture.activations = activations
        return activations.clone()

    with forward_hook(layer, hook):
        yield capture


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
