"""Smoothing wrappers: eigen smoothing and aug smoothing against pytorch-grad-cam, scales and noise by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcam
from gradcam.smoothing import AugSmooth, EigenSmooth, NoiseSmooth, eigen_smoothed
from methods.cam_nets import GridNet, grid_input, scaled_resnet18
from methods.pgc_reference import layer_terms
from methods.test_eigengradcam import projection_atol
from tolerances import cam_magnitude, heatmap_atol, layer_output, normalized_atol, sum_atol, unit_roundoff


def pgc_eigen_maps(cls, model, layer, x, classes):
    """pytorch-grad-cam's raw map with and without ``eigen_smooth`` (before its ReLU), from its own hooks."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = model.get_submodule(layer)
    targets = [ClassifierOutputTarget(c) for c in classes]
    with cls(model=model, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=targets)
        a = cam.activations_and_grads.activations[0].numpy()
        g = cam.activations_and_grads.gradients[0].numpy()
        smooth = cam.get_cam_image(x, module, targets, a, g, eigen_smooth=True)
        plain = cam.get_cam_image(x, module, targets, a, g, eigen_smooth=False)
    return torch.from_numpy(smooth).float(), torch.from_numpy(plain).float()


def channel_terms(name, weights, a, g):
    """Each method's channel terms T (B, K, u, v) in float64 and a bound on |ours - pytorch-grad-cam's| per term:
    element-wise methods (HiResCAM g A, LayerCAM ReLU(g) A) round the same product of the same values; the others
    sum their weights over u*v cells in other orders (Grad-CAM: a mean; Grad-CAM++, XGradCAM: two sums and a
    quotient of positive terms, XGradCAM's 1e-7 added to sum A), then one product each."""
    a, g, weights = a.double(), g.double(), weights.double()
    cells = a.shape[2] * a.shape[3]
    if name in ("HiResCAM", "LayerCAM"):
        terms = (g if name == "HiResCAM" else torch.relu(g)) * a
        return terms, torch.zeros_like(terms)
    if name == "GradCAM":
        weights_atol = sum_atol(cells, 1.0) * g.abs().mean((2, 3))
    elif name == "XGradCAM":
        sums = a.sum((2, 3))
        weights_atol = sum_atol(cells, 1.0, depth=3) * (g.abs() * a).sum((2, 3)) / sums.clamp_min(1e-30)
        weights_atol = weights_atol + weights.abs() * 1e-7 / (sums + 1e-7)
    else:
        weights_atol = sum_atol(cells, 1.0, depth=3) * weights.abs()
    terms = weights[:, :, None, None] * a
    return terms, weights_atol[:, :, None, None] * a.abs() + 2 * unit_roundoff() * terms.abs()


def perturbed_projection_atol(terms, errors):
    """How far the centred first-component projection of ``terms`` (K, u, v) moves when each term moves by up to
    ``errors``: a row of the centred matrix by |dM_i| (the centring adds the mean error), the axis by up to
    2 |dM|_F / (sigma_1 - sigma_2) (Wedin), the projection by |dM_i| + |M_i| times that."""
    matrix = terms.flatten(1).T
    matrix = matrix - matrix.mean(0)
    d_matrix = errors.flatten(1).T
    d_matrix = d_matrix + d_matrix.mean(0)
    sigma = torch.linalg.svdvals(matrix)
    axis_error = 2 * float(d_matrix.norm()) / float(sigma[0] - sigma[1])
    return float((d_matrix.norm(dim=1) + matrix.norm(dim=1) * axis_error).max())


@pytest.mark.parametrize("name", ["GradCAM", "HiResCAM", "LayerCAM", "GradCAMPlusPlus", "XGradCAM"])
def test_eigen_smooth_agrees_with_pytorch_grad_cam(name):
    pgc = pytest.importorskip("pytorch_grad_cam")
    # pytorch-grad-cam's Grad-CAM++ adds 1e-6 to its denominator; a classifier scaled by 1e6 makes that negligible
    # (test_gradcam_pp.py); every map here is linear in the scale, and the tolerance is relative.
    model = scaled_resnet18(1e6)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ours = EigenSmooth(getattr(gradcam, name)(model, "layer3"))(x, [3, 7])
    smooth, plain = pgc_eigen_maps(getattr(pgc, name), model, "layer3", x, [3, 7])
    terms, term_errors = channel_terms(name, ours.weights, *layer_terms(model, "layer3", x, [3, 7]))
    for b in range(2):  # pytorch-grad-cam's SVD sign is arbitrary: ours correlates with the unsmoothed map
        sign = 1.0 if float((smooth[b] * (plain[b] - plain[b].mean())).sum()) >= 0 else -1.0
        expected = torch.relu(sign * smooth[b])
        assert expected.max() > 0
        atol = projection_atol(terms[b]) + perturbed_projection_atol(terms[b], term_errors[b])
        torch.testing.assert_close(ours.raw[b], expected, rtol=0, atol=atol)
    assert ours.method == f"{getattr(gradcam, name).name}+eigen-smooth"


def test_eigen_smooth_of_a_rank_one_map_is_the_centred_map():
    # Grad-CAM on GridNet class 1: alpha = (0.5, 0), terms (0.5 A0, 0): the component is 0.5 (A0 - mean A0).
    e = EigenSmooth(gradcam.GradCAM(GridNet(), "features"))(grid_input(), 1)
    a0 = grid_input()[:, 0]
    torch.testing.assert_close(e.raw, torch.relu(0.5 * (a0 - 2.5)))
    torch.testing.assert_close(e.weights, torch.tensor([[0.5, 0.0]]))  # Grad-CAM's own weights, reported
    assert eigen_smoothed(gradcam.GradCAM) is eigen_smoothed(gradcam.GradCAM)  # one class per method
    with pytest.raises(gradcam.MethodError, match="layer method"):
        EigenSmooth(gradcam.SmoothGrad(GridNet()))


def test_aug_smooth_agrees_with_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = scaled_resnet18()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 48)
    ours = AugSmooth(gradcam.GradCAM(model, "layer3"))(x, [3, 7])
    with pgc.GradCAM(model=model, target_layers=[model.layer3]) as cam:
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(3), ClassifierOutputTarget(7)], aug_smooth=True))
    # Both are means of 6 min-max normalised maps in [0, 1]. Each augmented Grad-CAM map sums K channels of
    # alpha (a mean over u*v cells) in other orders; its heatmap is then within heatmap_atol, plus pytorch-grad-cam's
    # 1e-7 added to the span (relative 1e-7 / span); the mean of 6 adds its own roundings.
    errors = []
    for inputs, _ in AugSmooth(gradcam.GradCAM(model, "layer3")).variants(x):
        e = gradcam.GradCAM(model, "layer3")(inputs, [3, 7])
        a = layer_output(model, "layer3", inputs)
        raw_atol = sum_atol(max(a.shape[1], a.shape[2] * a.shape[3]), cam_magnitude(e.weights, a), depth=2)
        spans = e.raw.amax((1, 2)) - e.raw.amin((1, 2))
        errors.append(heatmap_atol(e.raw, (64, 48), raw_atol) + 1e-7 / float(spans[spans > 0].min()))
    assert len(errors) == 6
    atol = sum(errors) / len(errors) + sum_atol(6, 1.0)
    torch.testing.assert_close(ours.raw, theirs, rtol=0, atol=atol)
    assert ours.heatmap.amax() == 1 and ours.method == "gradcam+aug-smooth"


class Identity(nn.Module):
    """x (B, 1, H, W) -> layer '0' = x (1x1 conv, weight 1) -> global average -> one logit: Grad-CAM's map is
    ReLU(x) / (HW) at the input's resolution, so every augmentation's map is predictable."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).mean(dim=(2, 3))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with align_corners=False, by hand: along each axis output 2i samples x at i - 1/4
    and 2i+1 at i + 1/4, i.e. (3 x_i + x_{i-1}) / 4 and (3 x_i + x_{i+1}) / 4, indices clamped at the edges."""
    for axis in (-1, -2):
        before = torch.cat([x.narrow(axis, 0, 1), x.narrow(axis, 0, x.shape[axis] - 1)], dim=axis)
        after = torch.cat([x.narrow(axis, 1, x.shape[axis] - 1), x.narrow(axis, x.shape[axis] - 1, 1)], dim=axis)
        x = torch.stack([(3 * x + before) / 4, (3 * x + after) / 4], dim=axis).flatten(axis - 1, axis)
    return x


def down2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear /2 with align_corners=False: output i samples 2i + 1/2, the mean of each 2x2 block."""
    return F.avg_pool2d(x[None, None], 2)[0, 0]


def test_aug_smooth_scales_and_flips_map_back_exactly_by_hand():
    torch.manual_seed(4)
    x = torch.rand(1, 1, 6, 8) + 0.1  # positive: Grad-CAM's map is normalize(x)
    method = gradcam.GradCAM(Identity(), "layer")
    plain = method(x, 0).heatmap
    # flips only (the map of a mirrored image mirrored back is the map), intensities 0.9 / 1.1 (the same map)
    torch.testing.assert_close(AugSmooth(method)(x, 0).raw, plain)
    # scale 2: the x2 image's map is normalize(up2(x)) (the layer is the input); resized back it is down2 of that
    up = up2(x[0, 0])
    blurred = (down2(up) - up.amin()) / (up.amax() - up.amin())
    e = AugSmooth(method, flips=(False, True), scales=(2.0,), multipliers=(1.0,))(x, 0)
    torch.testing.assert_close(e.raw[0], blurred, rtol=0, atol=normalized_atol(1e-6, 1.0))
    e = AugSmooth(method, flips=(False,), scales=(1.0, 2.0), multipliers=(1.0,))(x, 0)
    torch.testing.assert_close(e.raw[0], (plain[0] + blurred) / 2, rtol=0, atol=normalized_atol(1e-6, 1.0))


def test_aug_smooth_keeps_the_clean_images_top_class_and_shapes(gap_net):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 10, 10)
    e = AugSmooth(gradcam.GradCAM(gap_net, "act"), scales=(0.8, 1.0, 1.2))(x)
    assert torch.equal(e.classes, gap_net(x).argmax(1))
    assert e.heatmap.shape == (3, 10, 10) and e.raw.shape == (3, 10, 10)
    multi = AugSmooth(gradcam.GradCAM(gap_net, "act"))(x, torch.tensor([[0, 1]] * 3))
    assert multi.heatmap.shape == (3, 2, 10, 10)


def test_noise_smooth_is_the_average_of_the_noisy_maps(gap_net):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8)
    method = gradcam.GradCAMPlusPlus(gap_net, "act")
    e = NoiseSmooth(method, samples=3, noise=0.2, seed=5)(x, [1, 4])
    generator = torch.Generator().manual_seed(5)  # the documented draw: image after image, 3 draws each
    noise = torch.stack([torch.randn((3, 3, 8, 8), generator=generator) * (0.2 * (x[b].max() - x[b].min()))
                         for b in range(2)], dim=1)  # fmt: skip
    expected = sum(method(x + noise[m], [1, 4]).heatmap for m in range(3)) / 3
    # the same noise (sigma rounded as documented, then one product), the same calls, summed in the same order
    assert torch.equal(e.raw, expected)
    torch.testing.assert_close(NoiseSmooth(method, samples=3, noise=0.2, seed=5)(x, [1, 4]).raw, e.raw)  # seeded
    torch.testing.assert_close(NoiseSmooth(method, stdev=0.0)(x, [1, 4]).raw, method(x, [1, 4]).heatmap)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        NoiseSmooth(method, samples=0)
    with pytest.raises(TypeError, match="method must be an explainer"):
        NoiseSmooth(gap_net)


WRAPPERS = {
    "aug": lambda model: AugSmooth(gradcam.GradCAM(model, "body"), scales=(0.75, 1.0)),
    "noise": lambda model: NoiseSmooth(gradcam.LayerCAM(model, "body"), samples=2),
    "eigen": lambda model: EigenSmooth(gradcam.HiResCAM(model, "body")),
}


@pytest.mark.parametrize("rank", [1, 2, 3], ids=["signal", "image", "volume"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrappers_leave_the_model_as_found_on_every_rank(wrapper, rank):
    from conftest import RANK_SHAPES, GapNet, GapNetND

    torch.manual_seed(0)
    model = GapNet() if rank == 2 else GapNetND(rank)
    model.train()
    model.body[1].eval()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(RANK_SHAPES[rank], generator=torch.Generator().manual_seed(rank))
    e = WRAPPERS[wrapper](model)(x, [1, 2])
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 7.0))
    assert e.heatmap.shape == x.shape[:1] + x.shape[2:] and torch.isfinite(e.heatmap).all()
    assert float(e.heatmap.max()) == 1.0
    with torch.inference_mode():
        again = WRAPPERS[wrapper](model)(x.clone(), [1, 2])
    torch.testing.assert_close(again.heatmap, e.heatmap)


def test_noise_smoothing_the_input_gradient_is_smoothgrad(gap_net):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 8, 8)
    composed = NoiseSmooth(gradcam.InputGradient(gap_net), samples=4, noise=0.15, seed=1)(x, [0, 2])
    smoothgrad = gradcam.SmoothGrad(gap_net, samples=4, noise=0.15, seed=1)(x, [0, 2])
    assert composed.heatmap.shape == (2, 3, 8, 8)
    # the same noise and gradients from other batches (4 noisy copies at once against one at a time): dy/dx sums
    # 6 * 9 then 8 * 9 terms (depth 2) of at most the backward with |W| and every ReLU open (an upper bound for
    # any noisy input), then a mean over 4 samples
    with torch.no_grad():
        body = gap_net.body
        norm = body[1]
        g3 = gap_net.fc.weight[[0, 2]].abs()[:, :, None, None].expand(2, 6, 4, 4) / 16
        g2 = F.conv_transpose2d(g3, body[3].weight.abs(), stride=2, padding=1, output_padding=1)
        g1 = g2 * (norm.weight / torch.sqrt(norm.running_var + norm.eps)).abs()[None, :, None, None]
        size = float(F.conv_transpose2d(g1, body[0].weight.abs(), padding=1).max())
    atol = sum_atol(72, size, depth=3)
    torch.testing.assert_close(composed.heatmap, smoothgrad.heatmap, rtol=0, atol=atol)


def test_an_eigen_smoothed_class_composes_with_multi_layer_fusion(gap_net):
    # eigen_smoothed(GradCAM) is an ordinary LayerMethod class: MultiLayerCAM runs it on each layer
    x = torch.randn(2, 3, 8, 8)
    fused = gradcam.MultiLayerCAM(gap_net, ["body", "act"], method=eigen_smoothed(gradcam.GradCAM))(x, [1, 2])
    maps = [EigenSmooth(gradcam.GradCAM(gap_net, layer))(x, [1, 2]).heatmap for layer in ("body", "act")]
    torch.testing.assert_close(fused.raw, (maps[0] + maps[1]) / 2)


def _noise_sensitive_classifier() -> nn.Module:
    """Class 0: a constant 0.5; class 1: the mean rectified Laplacian, 0 on a flat image and ~0.4 x 9 sigma on
    N(0, sigma^2) noise (the centre's 8 and the eight -1s)."""
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="replicate")
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
        conv.weight[1, 0] = -1.0
        conv.weight[1, 0, 1, 1] = 8.0
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def test_noise_smooth_warns_when_the_noise_takes_the_class_away(caplog):
    model, x = _noise_sensitive_classifier(), torch.ones(2, 1, 8, 8)
    with caplog.at_level("WARNING", logger="gradcam"):
        NoiseSmooth(gradcam.GradCAM(model, "1"), samples=4, stdev=0.01)(x)  # Laplacian ~0.04 < 0.5: class 0 kept
    assert not caplog.records
    with caplog.at_level("WARNING", logger="gradcam"):
        e = NoiseSmooth(gradcam.GradCAM(model, "1"), samples=4, stdev=1.0)(x)  # ~3.6 > 0.5: class 1 on every copy
    assert e.classes.tolist() == [0, 0]  # the clean image's class is still the one explained
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        "gradcam: noise smoothing (stdev=1): the model's top-1 class survives in only 0, 0 of the 4 noisy copies of "
        "image(s) [0, 1], so the averaged map explains what the model makes of the noise; lower the noise"
    )
