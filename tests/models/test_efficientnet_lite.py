"""Our EfficientNet-Lite0 against timm's tf_efficientnet_lite0, TF 'SAME' padding, in-order weight mapping."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from gradcam.models.efficientnet_lite import (
    Conv2dSame,
    efficientnet_lite0,
    lite0_weights_path,
    load_lite0_weights,
    map_state_dict_in_order,
)
from tolerances import assert_close


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_lite0_weights(efficientnet_lite0()).eval()


def test_packaged_weights_map_in_order_onto_our_keys(lite0: torch.nn.Module) -> None:
    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    ours = lite0.state_dict()
    assert len(source) == len(ours) == 296
    assert list(source)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    for (src_key, src), (key, val) in zip(source.items(), ours.items(), strict=True):
        assert torch.equal(src, val), (src_key, key)
    assert list(ours)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert list(ours)[-2:] == ["classifier.weight", "classifier.bias"]


def test_matches_timm_tf_efficientnet_lite0(lite0: torch.nn.Module) -> None:
    timm = pytest.importorskip("timm")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert list(reference.state_dict()) == list(lite0.state_dict())
    reference.load_state_dict(lite0.state_dict())
    names = {n for n, _ in reference.named_modules()}
    assert {"conv_stem", "bn1", "blocks.6.0.conv_pwl", "conv_head", "bn2", "classifier"} <= names
    assert {"conv_stem", "bn1", "blocks.6.0.conv_pwl", "conv_head", "bn2", "classifier"} <= {
        n for n, _ in lite0.named_modules()
    }
    torch.manual_seed(0)
    # float64 (copies: the fixture is shared): two implementations of the same 45 conv / linear layers differ by
    # their sums' orders only (longest: the classifier's 1280 features), ~1e-12 of the logits' size
    ours64, reference = copy.deepcopy(lite0).double(), reference.double()
    for shape in [(2, 3, 224, 224), (1, 3, 193, 257)]:  # odd sizes exercise the asymmetric padding
        x = torch.randn(shape, dtype=torch.float64)
        with torch.no_grad():
            ours, theirs = ours64(x), reference(x)
        assert_close(ours, theirs, terms=1280, magnitude=max(1.0, float(theirs.abs().max())), depth=45)
        assert ours.shape == (shape[0], 1000)
    assert reference.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert reference.pretrained_cfg["interpolation"] == "bicubic"


def test_conv2d_same_pads_like_tensorflow() -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 224, 223)
    # TF 'SAME', stride 2, k 3: 224 rows need 1 extra row at the bottom, 223 columns 1 on each side
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, None, 2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (112, 112)
    conv5 = Conv2dSame(1, 1, 5, stride=2)
    y = torch.randn(1, 1, 56, 56)  # total pad 3: one before, two after
    torch.testing.assert_close(conv5(y), F.conv2d(F.pad(y, [1, 2, 1, 2]), conv5.weight, None, 2))


def test_bn_eps_relu6_and_no_se() -> None:
    model = efficientnet_lite0()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    assert any(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, (torch.nn.SiLU, torch.nn.Sigmoid)) for m in model.modules())
    assert model.conv_stem.out_channels == 32 and model.conv_head.out_channels == 1280


def test_map_state_dict_in_order_errors() -> None:
    target = OrderedDict(a=torch.zeros(2), b=torch.zeros(3))
    mapped = map_state_dict_in_order(OrderedDict(x=torch.ones(2), y=torch.ones(3)), target)
    assert list(mapped) == ["a", "b"]
    with pytest.raises(ValueError, match=r"'y' has shape \(4,\) but model tensor 'b' expects \(3,\)"):
        map_state_dict_in_order(OrderedDict(x=torch.ones(2), y=torch.ones(4)), target)
    with pytest.raises(ValueError, match="the file has 1 tensors, the model expects 2"):
        map_state_dict_in_order(OrderedDict(x=torch.ones(2)), target)


def test_scriptable_and_train_mode(lite0: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 96, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(lite0)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), lite0(x))
    model = efficientnet_lite0().train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert int(model.bn1.num_batches_tracked) == 1
    assert model.conv_stem.weight.grad is not None
