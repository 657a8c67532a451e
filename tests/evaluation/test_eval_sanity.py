"""Sanity checks (Adebayo et al. 2018): SSIM by hand and against scikit-image, MPRT on a hand-weighted net, the
user's model left as found, the random-logit identity, the verdict on the synthetic CNN, and Quantus 0.6.0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from gradcam.evaluation import load_synthetic_model, synthetic_items
from gradcam.evaluation.sanity import (
    SanityCheck,
    image_rows,
    map_factory,
    parameter_randomisation,
    random_logit,
    randomisable_layers,
    randomised_models,
)
from gradcam.evaluation.similarity import map_similarities, ssim
from gradcam.evaluation.sources import BaselineSource
from gradcam.imaging.geometry import preprocess_batch
from gradcam.methods.base import normalize
from tolerances import assert_close, sum_atol

C1, C2 = 0.01**2, 0.03**2
SIZE = 12  # >= the 11 x 11 Gaussian window


class TwoLayer(nn.Module):
    """``A = ReLU(conv(x))`` with conv weights (1, -1): ``A_0 = ReLU(x)``, ``A_1 = ReLU(-x)``; logits
    ``W mean(A)`` with ``W = I``. Grad-CAM of class c at ``relu`` is ``ReLU(sum_k W_ck A_k)`` normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def _input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def _fresh(kind: type[nn.Module], *args, seed: int, **kwargs) -> nn.Module:
    """A newly built layer under ``torch.manual_seed(seed)``: its constructor runs ``reset_parameters()`` once."""
    torch.manual_seed(seed)
    return kind(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ SSIM


def test_ssim_of_identical_maps_is_exactly_one():
    a = torch.rand(3, 20, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ssim(a, a).tolist() == [1.0, 1.0, 1.0]
    flat = torch.zeros(1, SIZE, SIZE)
    assert map_similarities(flat, flat)["ssim"] == [1.0]  # C1 C2 / (C1 C2)
    sparse = flat.clone()
    sparse[0, 5, 5] = 1.0  # against a zero map its zero background alone would score SSIM ~ 1: no SSIM
    assert math.isnan(map_similarities(sparse, flat)["ssim"][0]) and math.isnan(
        map_similarities(flat, sparse)["ssim"][0]
    )


def _seven_by_seven() -> torch.Tensor:
    a = torch.zeros(1, 7, 7, dtype=torch.float64)
    a[0, 3] = 1.0  # one row of ones: mean 1/7, population variance (1/7)(6/7)
    return a


def test_ssim_on_one_7x7_window_by_hand():
    a, mu, var = _seven_by_seven(), 1 / 7, 6 / 49
    negation = ((2 * mu * (1 - mu) + C1) * (-2 * var + C2)) / ((mu**2 + (1 - mu) ** 2 + C1) * (2 * var + C2))
    mu_b = 0.5 * mu + 0.25  # b = a / 2 + 1 / 4: variance var / 4, covariance var / 2
    contrast = ((2 * mu * mu_b + C1) * (var + C2)) / ((mu**2 + mu_b**2 + C1) * (1.25 * var + C2))
    got = [float(ssim(a, b, window="uniform", win_size=7)) for b in (1 - a, a / 2 + 0.25)]
    assert_close(torch.tensor(got), torch.tensor([negation, contrast]), terms=49, magnitude=1.0, dtype=torch.float64)


def test_ssim_agrees_with_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 40, 33, generator=g, dtype=torch.float64)
    b = (a + 0.4 * torch.rand(3, 40, 33, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    ref = [
        metrics.structural_similarity(
            p.numpy(), q.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
        )
        for p, q in zip(a, b)
    ]
    assert_close(ours, torch.tensor(ref), terms=11 * 11 * 2, magnitude=1.0, dtype=torch.float64)
    box = ssim(a, b, window="uniform", sample_covariance=True)  # scikit-image's defaults (7 x 7, n / (n - 1))
    ref = [metrics.structural_similarity(p.numpy(), q.numpy(), data_range=1) for p, q in zip(a, b)]
    assert_close(box, torch.tensor(ref), terms=7 * 7 * 2, magnitude=1.0, dtype=torch.float64)
    seven = _seven_by_seven()[0].numpy()
    one = metrics.structural_similarity(seven, 1 - seven, win_size=7, use_sample_covariance=False, data_range=1)
    assert float(ssim(_seven_by_seven(), 1 - _seven_by_seven(), window="uniform")) == pytest.approx(one, abs=1e-14)


def test_ssim_rejects_bad_arguments():
    with pytest.raises(ValueError, match="smaller than the 11 x 11"):
        ssim(torch.rand(1, 7, 7), torch.rand(1, 7, 7))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 12, 12), torch.rand(1, 12, 13))
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(1, 12, 12), torch.rand(1, 12, 12), window="box")
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.rand(1, 12, 12), torch.rand(1, 12, 12), window="uniform", win_size=4)


# ------------------------------------------------------------------------------------------------- MPRT


def _gradcam_map(w: torch.Tensor, x: torch.Tensor, conv: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM of class 0 on ``TwoLayer`` with head ``w`` (and conv weights ``conv``), by hand, float64."""
    x = x.double()[:, 0]
    k = torch.tensor([1.0, -1.0]) if conv is None else conv.flatten()
    a = torch.stack([torch.relu(k[0].double() * x), torch.relu(k[1].double() * x)], 1)
    return normalize(torch.relu((w[0].double()[None, :, None, None] * a).sum(1)))


def test_cascading_on_a_hand_weighted_net():
    net, x, seed = TwoLayer(), _input(), 0
    fc = _fresh(nn.Linear, 2, 2, seed=seed).weight.detach()
    conv = _fresh(nn.Conv2d, 1, 2, 1, bias=False, seed=seed).weight.detach()
    original, after_fc, after_both = _gradcam_map(torch.eye(2), x), _gradcam_map(fc, x), _gradcam_map(fc, x, conv)
    assert float(after_fc.amax()) == 1.0 and float(after_both.amax()) == 1.0  # neither map is flat
    curve = parameter_randomisation(net, "gradcam", x, 0, layer="relu", seed=seed)
    assert list(curve) == ["fc", "conv"]  # from the logits down
    for layer, expected in (("fc", after_fc), ("conv", after_both)):
        rank = np.mean([spearmanr(p.flatten(), q.flatten())[0] for p, q in zip(original, expected)])
        assert curve[layer]["spearman"] == pytest.approx(rank, rel=1e-4)
        structural = float(ssim(original, expected).mean())
        assert curve[layer]["ssim"] == pytest.approx(structural, abs=1e-4)
    with torch.no_grad():
        for (_, model), expected in zip(randomised_models(net, seed=seed), (after_fc, after_both)):
            made = map_factory("gradcam", "relu")(model)(x, torch.zeros(2, 1, dtype=torch.long))[:, 0]
            assert_close(made, expected.float(), terms=2, magnitude=1.0, depth=3)


def test_independent_and_cascading_differ_only_where_expected():
    net, seed = TwoLayer(), 5
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    fc = _fresh(nn.Linear, 2, 2, seed=seed)
    conv = _fresh(nn.Conv2d, 1, 2, 1, bias=False, seed=seed).weight
    cascading = [
        (name, {k: v.clone() for k, v in m.state_dict().items()}) for name, m in randomised_models(net, seed=seed)
    ]
    independent = [
        (name, {k: v.clone() for k, v in m.state_dict().items()})
        for name, m in randomised_models(net, "independent", seed=seed)
    ]
    assert [n for n, _ in cascading] == [n for n, _ in independent] == ["fc", "conv"]
    (_, c1), (_, c2) = cascading
    (_, i1), (_, i2) = independent
    assert all(torch.equal(c1[k], i1[k]) for k in c1)  # step 1: the top layer alone, in both modes
    assert torch.equal(c1["fc.weight"], fc.weight) and torch.equal(c1["fc.bias"], fc.bias)
    assert torch.equal(c1["conv.weight"], trained["conv.weight"])
    assert torch.equal(c2["conv.weight"], conv) and torch.equal(i2["conv.weight"], conv)
    assert torch.equal(c2["fc.weight"], fc.weight)  # cascading keeps the head random
    assert torch.equal(i2["fc.weight"], trained["fc.weight"]) and torch.equal(i2["fc.bias"], trained["fc.bias"])


def test_the_users_model_and_random_state_are_left_as_found():
    net = TwoLayer().train()
    net.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    check = SanityCheck(seed=2)
    check.update(net, map_factory("gradcam", "relu"), _input(), torch.tensor([0, 1]))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules()) and not net.fc.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(check.records) == 2 * (2 + 2) + 2  # images x (steps per mode x 2 modes) + random-logit


def test_layers_and_bad_arguments():
    net = load_synthetic_model().model
    names = randomisable_layers(net)
    assert len(names) == 15 and names[0] == "features.0" and names[-1] == "fc"  # 7 conv + 7 batch norm + fc
    with pytest.raises(ValueError, match="mode"):
        next(randomised_models(net, "backwards"))
    with pytest.raises(ValueError, match="layers"):
        next(randomised_models(net, layers=["nothing"]))
    with pytest.raises(ValueError, match="threshold"):
        SanityCheck(threshold=2.0)
    with pytest.raises(ValueError, match="target"):
        parameter_randomisation(TwoLayer(), "gradcam", _input(), [0, 1, 0], layer="relu")
    with pytest.raises(ValueError, match="unknown method"):
        map_factory("magic")
    with pytest.raises(TypeError, match="by name"):
        map_factory("gradcam", TwoLayer().relu)


# ---------------------------------------------------------------------------------------------- random logit


def test_random_logit_of_a_class_independent_method_is_exactly_one():
    net, x = TwoLayer(), _input()
    values = random_logit(net, "eigencam", x, 0, layer="relu")
    assert values["ssim"] == 1.0 and values["spearman"] == 1.0
    # Grad-CAM: the other class of two is class 1, whose map is ReLU(-x) normalised
    dependent = random_logit(net, "gradcam", x, 0, layer="relu")
    expected = _gradcam_map(torch.eye(2).flip(0), x)
    assert dependent["ssim"] == pytest.approx(float(ssim(_gradcam_map(torch.eye(2), x), expected).mean()), abs=1e-4)


# ----------------------------------------------------------------------------------------------- the verdict


def _synthetic_batch(count: int = 2):
    loaded = load_synthetic_model()
    x, _ = preprocess_batch([item.load() for item in synthetic_items(count, seed=1)], loaded.preprocess)
    with torch.no_grad():
        classes = loaded.model(x).argmax(1)
    return loaded, x, classes


def test_verdict_on_the_synthetic_cnn_gradcam_passes_baselines_fail():
    loaded, x, classes = _synthetic_batch()
    verdicts = {}
    for name in ("gradcam", "center", "random"):
        check = SanityCheck(modes=("cascading",), random_logit=name == "gradcam")
        factory = (
            map_factory(name, loaded.default_layer) if name == "gradcam" else (lambda m, n=name: BaselineSource(n).maps)
        )
        check.update(loaded.model, factory, x, classes)
        verdicts[name] = check.summary()
    gradcam = verdicts["gradcam"]
    assert gradcam["passed"] is True
    assert gradcam["mprt_ssim"] < 0.5 and abs(gradcam["mprt_spearman"]) < 0.5
    assert gradcam["random_logit_ssim"] < 1.0
    assert len(gradcam["curves"]["cascading"]) == 15
    for name in ("center", "random"):
        assert verdicts[name]["passed"] is False
        assert verdicts[name]["mprt_ssim"] == 1.0 and verdicts[name]["mprt_spearman"] == 1.0


def _cascade(check: SanityCheck, ssims: list[float], ranks: list[float]) -> SanityCheck:
    """Records of one image's cascading curve with the given SSIM and |Spearman| per step."""
    check.records = [
        {"test": "cascading", "step": i + 1, "layer": f"layer{i}", "image": 0, "ssim": a, "spearman": b,
         "spearman_abs": b}
        for i, (a, b) in enumerate(zip(ssims, ranks))
    ]  # fmt: skip
    return check


def test_the_verdict_reads_the_mean_of_the_whole_cascading_curve():
    # the last step alone would pass all three: the mean over the steps decides
    late = _cascade(SanityCheck(modes=("cascading",)), [0.9, 0.8, 0.7, 0.1], [0.2, 0.2, 0.2, 0.2]).summary()
    assert late["mprt_ssim"] == pytest.approx(2.5 / 4) and late["mprt_ssim_last"] == 0.1
    assert late["passed"] is False and late["verdict"] == "FAIL"
    ranks = _cascade(SanityCheck(modes=("cascading",)), [0.3, 0.3, 0.2, 0.2], [0.9, 0.8, 0.5, 0.1]).summary()
    assert ranks["mprt_spearman"] == pytest.approx(2.3 / 4) and ranks["mprt_spearman_last"] == 0.1
    assert ranks["passed"] is True and ranks["verdict"] == "partial"
    clean = _cascade(SanityCheck(modes=("cascading",)), [0.6, 0.5, 0.4, 0.5], [0.5, 0.5, 0.5, 0.5]).summary()
    assert clean["mprt_ssim"] == 0.5 and clean["verdict"] == "pass"  # the threshold itself passes
    assert image_rows(_cascade(SanityCheck(), [0.9, 0.8, 0.7, 0.1], [0.4, 0.2, 0.2, 0.2]).records) == {
        0: {"mprt_ssim": pytest.approx(2.5 / 4), "mprt_spearman": pytest.approx(1.0 / 4)}
    }
    assert SanityCheck(modes=("cascading",)).summary()["verdict"] is None  # nothing seen: no verdict


def test_guided_backprop_fails_on_the_synthetic_cnn_although_its_last_step_is_unlike():
    # Adebayo et al.'s finding: Guided Backprop's map survives the randomisation of most of the model
    loaded, x, classes = _synthetic_batch()
    check = SanityCheck(modes=("cascading",), random_logit=False)
    check.update(loaded.model, map_factory("guided-backprop"), x, classes)
    summary = check.summary()
    assert summary["mprt_ssim_last"] < 0.5 < summary["mprt_ssim"]
    assert summary["verdict"] == "FAIL"


def test_merge_of_two_shards_gives_the_same_summary():
    net, x = TwoLayer(), _input(4)
    factory, classes = map_factory("gradcam", "relu"), torch.tensor([0, 1, 1, 0])
    whole = SanityCheck()
    whole.update(net, factory, x, classes)
    a, b = SanityCheck(), SanityCheck()
    a.update(net, factory, x[:2], classes[:2], first=0)
    b.update(net, factory, x[2:], classes[2:], first=2)
    assert a.merge(b).summary() == whole.summary()


# ---------------------------------------------------------------------------------------------- Quantus 0.6.0


def _quantus():
    return pytest.importorskip("quantus", reason="quantus is not installed (pip install quantus==0.6.0)")


def _explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs)
    classes = torch.as_tensor(targets).long().view(-1, 1)
    return map_factory("gradcam", "relu")(model)(x, classes).numpy()  # (B, 1, H, W)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Quantus' NaN for a flat map
def test_mprt_agrees_with_quantus():
    quantus = _quantus()
    net, x, seed = TwoLayer(), _input(), 4
    y = np.array([0, 1])
    for order, mode in (("top_down", "cascading"), ("independent", "independent")):
        metric = quantus.MPRT(
            similarity_func=quantus.similarity_func.correlation_spearman, layer_order=order, seed=seed - 1,
            abs=False, normalise=False, disable_warnings=True,
        )  # fmt: skip
        scores = metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=_explain, batch_size=2)
        ours = parameter_randomisation(net, "gradcam", x, torch.from_numpy(y), mode, layer="relu", seed=seed)
        layers = [k for k in scores if k != "original"]  # Quantus lists independent steps bottom-up
        assert list(ours) == (layers if mode == "cascading" else layers[::-1]) == ["fc", "conv"]
        for layer, values in ours.items():
            # a flat map has no rank correlation: NaN in both, left out of our mean
            assert values["spearman"] == pytest.approx(float(np.nanmean(scores[layer])), rel=1e-6)


def test_random_logit_and_similarities_agree_with_quantus():
    quantus = _quantus()
    net, x = TwoLayer(), _input()
    y = np.array([0, 1])
    metric = quantus.RandomLogit(
        similarity_func=quantus.similarity_func.correlation_spearman, num_classes=2, normalise=False,
        disable_warnings=True,
    )  # fmt: skip
    scores = metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=_explain)
    ours = random_logit(net, "gradcam", x, torch.from_numpy(y), layer="relu")
    assert ours["spearman"] == pytest.approx(float(np.mean(scores)), rel=1e-6)
    g = torch.Generator().manual_seed(9)
    a, b = (
        torch.rand(2, 16, 16, generator=g, dtype=torch.float64),
        torch.rand(2, 16, 16, generator=g, dtype=torch.float64),
    )
    for p, q in zip(a, b):  # Quantus' SSIM: scikit-image defaults, data range of the pair
        span = float(torch.cat([p, q]).max() - torch.cat([p, q]).min())
        expected = quantus.similarity_func.ssim(p.numpy(), q.numpy())
        got = float(ssim(p, q, window="uniform", sample_covariance=True, data_range=span))
        assert got == pytest.approx(expected, abs=sum_atol(2 * 49, 1.0, torch.float64))
        assert map_similarities(p[None], q[None])["spearman"][0] == pytest.approx(
            quantus.similarity_func.correlation_spearman(p.numpy().ravel(), q.numpy().ravel()), rel=1e-12
        )
    assert math.isnan(map_similarities(torch.ones(1, 16, 16), a[:1].float())["spearman"][0])


# ------------------------------------------------------------------------------------------- gradcam evaluate


def test_evaluate_sanity_task_matches_the_function_api_however_batched():
    from gradcam.evaluation import EvaluationSettings, evaluate
    from gradcam.evaluation.report import format_table

    loaded, x, classes = _synthetic_batch(3)
    items = synthetic_items(3, seed=1)
    settings = EvaluationSettings(
        tasks=("sanity",), methods=("gradcam",), baselines=("center",), sanity_images=2, batch_size=1
    )
    one = evaluate(loaded, items, settings)
    two = evaluate(loaded, items, EvaluationSettings(**{**settings.__dict__, "batch_size": 2}))
    assert settings.sanity_modes == ("cascading",)  # the default: the verdict's test only
    check = SanityCheck(modes=settings.sanity_modes, seed=settings.seed)
    check.update(loaded.model, map_factory("gradcam", loaded.default_layer), x[:2], classes[:2])
    direct = check.summary()
    summary = two.row("gradcam").summary  # the same batch of two as the direct call: the same numbers
    assert two.sanity["gradcam"] == direct["curves"]
    assert summary["mprt_ssim"] == direct["mprt_ssim"] and summary["sanity"] == "pass"
    assert summary["random_logit_ssim"] == direct["random_logit_ssim"]
    # batches of one: other kernels, maps within float32 rounding, so near-tied ranks may swap (each swap moves
    # rho by ~1 / n for n = 112 * 112 pixels) and SSIM moves by about the maps' rounding
    for mode, curve in one.sanity["gradcam"].items():
        for layer, values in curve.items():
            for key, value in values.items():
                assert value == pytest.approx(direct["curves"][mode][layer][key], abs=1e-3), (mode, layer, key)
    assert one.row("gradcam").summary["sanity"] == "pass"
    for result in (one, two):
        assert result.row("center").summary["sanity"] == "FAIL"
        assert sum(1 for row in result.per_image if "mprt_ssim" in row) == 2 * 2  # 2 images x 2 sources
    table = format_table(one)
    assert "| MPRT SSIM (curve mean) ↓ |" in table and "| **FAIL** |" in table and "| pass |" in table


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_model_and_both_random_states_are_left_as_found():
    net, x = TwoLayer().cuda(), _input().cuda()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    first = parameter_randomisation(net, "gradcam", x, 0, layer="relu", seed=3)
    again = parameter_randomisation(net, "gradcam", x, 0, layer="relu", seed=3)
    assert first == again  # the same seed, the same randomised layers (drawn by the CUDA generator)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), cuda)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
