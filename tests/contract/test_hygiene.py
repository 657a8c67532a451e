"""Every registered method goes through the same hygiene checks: it leaves the model as it found it."""

from __future__ import annotations

import copy

import pytest
import torch

import gradcam
from conftest import RANK_SHAPES, GapNet, GapNetND
from gradcam.methods import METHODS, create_explainer

HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
)  # fmt: skip
LAYER = "body"  # the last conv's output, followed by an in-place ReLU


def explain(method: str, model, x, target=None):
    explainer = create_explainer(method, model, LAYER if METHODS[method].uses_layer else None)
    return explainer(x, target, **METHODS[method].call_options)


def snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "params": [p.detach().clone() for p in model.parameters()],
        "hooks": [(name, d, list(getattr(m, d).keys())) for name, m in model.named_modules() for d in HOOK_DICTS],
    }


def assert_same_state(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for b0, b1 in zip(before["buffers"], after["buffers"]):
        assert torch.equal(b0, b1)
    for p0, p1 in zip(before["params"], after["params"]):
        assert torch.equal(p0, p1)
    assert before["hooks"] == after["hooks"]


def messy_model(rank: int = 2):
    """A model in training mode with a user hook, a frozen part and existing .grad values (rank 1: signals,
    2: images, 3: volumes / videos)."""
    torch.manual_seed(0)
    model = GapNet() if rank == 2 else GapNetND(rank)
    model.train()
    model.body[1].eval()  # mixed flags must come back exactly
    model.body[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    model.body[3].register_forward_hook(lambda m, i, o: None)
    model.fc.register_forward_pre_hook(lambda m, i: None)
    return model


METHOD_NAMES = list(METHODS)


@pytest.mark.parametrize("rank", [1, 2, 3], ids=["signal", "image", "volume"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_model_state_is_restored(method, rank):
    model = messy_model(rank)
    before = snapshot(model)
    x = torch.randn(RANK_SHAPES[rank], generator=torch.Generator().manual_seed(4 + rank))
    e = explain(method, model, x)
    assert_same_state(before, snapshot(model))
    assert torch.isfinite(e.heatmap).all()
    # FEM's map is zero by definition when no position of any channel lies above mean + 2 std (8 positions of
    # the signal's layer rarely do): its weights then say so
    no_outlier = method == "fem" and not bool(e.weights.any())
    assert e.heatmap.abs().sum() > 0 or METHODS[method].call_options.get("counterfactual") or no_outlier
    positions = tuple(x.shape[2:])
    assert e.heatmap.shape[-rank:] == positions  # maps at the input's resolution, whatever the rank


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_model_state_is_restored_after_an_error(method):
    model = messy_model()
    before = snapshot(model)
    with pytest.raises(gradcam.TargetError):
        explain(method, model, torch.randn(2, 3, 8, 8), target=99)
    assert_same_state(before, snapshot(model))
    with pytest.raises(gradcam.TargetError):
        explain(method, model, torch.randn(2, 3, 8, 8), target=lambda out: out.sum())
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_explanations_use_eval_mode_and_are_deterministic(method):
    model = messy_model()
    x = torch.randn(2, 3, 8, 8)
    first = explain(method, model, x, [1, 2])
    reference = explain(method, copy.deepcopy(model).eval(), x, [1, 2])
    torch.testing.assert_close(first.heatmap, reference.heatmap)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_frozen_no_grad_and_inference_mode_give_the_same_maps(method):
    model = messy_model().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = explain(method, model, x, [0, 3])
    frozen = copy.deepcopy(model).requires_grad_(False)
    torch.testing.assert_close(explain(method, frozen, x, [0, 3]).heatmap, reference.heatmap)
    with torch.no_grad():
        torch.testing.assert_close(explain(method, model, x, [0, 3]).heatmap, reference.heatmap)
    with torch.inference_mode():
        inference_x = x.clone()
        torch.testing.assert_close(explain(method, model, inference_x, [0, 3]).heatmap, reference.heatmap)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_in_place_ops_after_the_layer_do_not_change_the_maps(method):
    torch.manual_seed(3)
    in_place = GapNet(inplace=True).eval()
    out_of_place = GapNet(inplace=False).eval()
    out_of_place.load_state_dict(in_place.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        explain(method, in_place, x, [1, 4]).heatmap, explain(method, out_of_place, x, [1, 4]).heatmap
    )


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_no_parameter_gradient_is_computed(method):
    model = messy_model().eval()
    calls = []
    handles = [p.register_hook(lambda g: calls.append(1)) for p in model.parameters() if p.requires_grad]
    grad_mode_before_layer = []
    pre = model.body[0].register_forward_hook(lambda m, i, o: grad_mode_before_layer.append(torch.is_grad_enabled()))
    try:
        explain(method, model, torch.randn(2, 3, 8, 8))
    finally:
        for handle in handles:
            handle.remove()
        pre.remove()
    assert calls == []
    if METHODS[method].uses_layer and method != "guided-gradcam":
        # no graph is recorded before the target layer, in every forward pass the method makes
        assert grad_mode_before_layer and not any(grad_mode_before_layer)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_autocast_bf16_is_close_to_float32(method):
    model = messy_model().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = explain(method, model, x, [1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = explain(method, model, x, [1, 2])
    assert mixed.heatmap.dtype == torch.float32
    scale = float(reference.heatmap.abs().max())
    torch.testing.assert_close(mixed.heatmap.float(), reference.heatmap, rtol=0.1, atol=0.1 * scale)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_stay_on_the_device_and_match_cpu(method):
    model = messy_model().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = explain(method, model, x, [1, 2])
    on_gpu = explain(method, copy.deepcopy(model).cuda(), x.cuda(), [1, 2])
    assert on_gpu.heatmap.device.type == "cuda" and on_gpu.scores.device.type == "cuda"
    torch.testing.assert_close(on_gpu.heatmap.cpu(), reference.heatmap, rtol=1e-4, atol=1e-4)
