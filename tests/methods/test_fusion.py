"""Multi-layer fusion: the automatic stages, the fused map against per-layer maps fused by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradcam
from methods.cam_nets import scaled_resnet18
from tolerances import heatmap_atol, layer_output, normalized_atol, sum_atol


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-30), 0)


def test_automatic_layers_are_the_stage_outputs():
    model = scaled_resnet18()
    fused = gradcam.MultiLayerCAM(model)
    fused(torch.randn(1, 3, 64, 64))
    assert fused.layer_names == ["relu", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("reduce", ["mean", "max", "product"])
def test_fused_map_equals_per_layer_maps_fused_by_hand(gap_net, reduce):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 8, 8)
    layers = ["body.2", "act"]  # 8x8 and 4x4
    fused = gradcam.MultiLayerCAM(gap_net, layers, reduce=reduce)(x, [1, 3])
    maps, atol = [], 0.0
    for layer in layers:
        raw = gradcam.LayerCAM(gap_net, layer)(x, [1, 3]).raw.unsqueeze(1)
        up = F.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
        maps.append(minmax(up))
        # LayerCAM sums K channels of ReLU(g) A >= 0 (both layers follow a ReLU): its summed terms are the map
        # itself; a normalised map's error is that over its span, and a mean or max of maps keeps the largest
        channels = layer_output(gap_net, layer, x).shape[1]
        atol = max(atol, heatmap_atol(raw, (8, 8), sum_atol(channels, float(raw.max()))))
    stacked = torch.stack(maps)
    expected = {"mean": stacked.mean(0), "max": stacked.amax(0), "product": stacked.prod(0)}[reduce]
    if reduce == "product":  # maps in [0, 1]: the product's error is at most the sum of the factors' errors
        atol *= len(layers)
    assert expected.max() > 0
    torch.testing.assert_close(fused.raw, expected, rtol=0, atol=atol)
    span = float((expected.amax((-2, -1)) - expected.amin((-2, -1))).min())
    torch.testing.assert_close(fused.heatmap, minmax(expected), rtol=0, atol=normalized_atol(atol, span))
    assert fused.layer == "body.2+act" and fused.weights is None
    assert fused.classes.tolist() == [1, 3]


def test_one_layer_is_the_method_itself_and_other_methods_plug_in(gap_net):
    x = torch.randn(2, 3, 8, 8)
    single = gradcam.MultiLayerCAM(gap_net, "act")(x)
    torch.testing.assert_close(single.heatmap, gradcam.LayerCAM(gap_net, "act")(x).heatmap)
    for method in ("gradcam++", gradcam.XGradCAM):
        fused = gradcam.MultiLayerCAM(gap_net, ["act"], method=method)(x, [0, 2])
        reference = (gradcam.GradCAMPlusPlus if method == "gradcam++" else method)(gap_net, "act")(x, [0, 2])
        torch.testing.assert_close(fused.heatmap, reference.heatmap)


def test_top1_is_resolved_once_and_shared(gap_net):
    torch.manual_seed(10)
    x = torch.randn(3, 3, 8, 8)
    fused = gradcam.MultiLayerCAM(gap_net, ["body.2", "act"])(x)
    torch.testing.assert_close(fused.classes, gap_net(x).argmax(1))


def test_bad_arguments_name_the_problem(gap_net):
    with pytest.raises(gradcam.MethodError, match="method must be a layer method"):
        gradcam.MultiLayerCAM(gap_net, ["act"], method="guided-backprop")
    with pytest.raises(ValueError, match="reduce must be one of"):
        gradcam.MultiLayerCAM(gap_net, ["act"], reduce="median")
    with pytest.raises(gradcam.LayerError, match="layers is empty"):
        gradcam.MultiLayerCAM(gap_net, [])
    with pytest.raises(gradcam.LayerError, match="not found"):
        gradcam.MultiLayerCAM(gap_net, ["act", "nope"])


def test_refinecam_is_gradcam_plus_plus_on_every_stage_multiplied(gap_net):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 8)
    refined = gradcam.RefineCAM(gap_net)(x, [1, 3])
    assert refined.layer == "body.2+act"  # the automatic stages: 8 x 8 and 4 x 4
    reference = gradcam.MultiLayerCAM(gap_net, ["body.2", "act"], method="gradcam++", reduce="product")(x, [1, 3])
    torch.testing.assert_close(refined.heatmap, reference.heatmap, rtol=0, atol=0)
    parts = [gradcam.GradCAMPlusPlus(gap_net, layer)(x, [1, 3]).heatmap for layer in ("body.2", "act")]
    assert torch.equal(refined.raw, parts[0] * parts[1])  # the same float32 products, in the same order
    assert gradcam.METHODS["refinecam"].cls is gradcam.RefineCAM
