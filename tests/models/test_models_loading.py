"""load_model for every kind of spec, weights files, labels files, list_models; never a download."""

from __future__ import annotations

import re
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from gradcam.models import (
    IMAGENET_PREPROCESS,
    LITE0_PREPROCESS,
    LoadedModel,
    ModelLoadError,
    list_models,
    load_model,
    load_state_dict_file,
)

RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty torch home, and any attempt to fetch a URL fails the test."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _refuse)
    return tmp_path / "torch_home"


class TinyNet(nn.Module):
    """A small CNN: features -> pool -> fc."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.1, 0.1)
    return model


FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(1)
        layers = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
        return nn.Sequential(*layers)

    def not_a_model():
        return 42
    """
)


# ------------------------------------------------------------------------------------------ default


def test_default_model_loads_offline() -> None:
    loaded = load_model()
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "efficientnet_lite0"
    assert loaded.preprocess == LITE0_PREPROCESS
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.preprocess.interpolation == "bicubic"
    assert loaded.labels is not None and len(loaded.labels) == 1000 and loaded.labels[281] == "tabby"
    assert loaded.default_layer == "bn2"
    assert not loaded.model.training
    assert dict(loaded.model.named_modules())["bn2"] is loaded.model.bn2


def test_default_model_with_weights_in_our_naming(tmp_path: Path) -> None:
    reference = load_model().model
    path = tmp_path / "lite0.pt"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = load_model("efficientnet-lite0", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x), atol=0, rtol=0)


# -------------------------------------------------------------------------------------- torchvision


def test_torchvision_missing_weights_says_where_to_put_them(no_downloads: Path) -> None:
    expected_path = no_downloads / "hub" / "checkpoints" / RESNET18_FILE
    message = (
        "no weights for torchvision:resnet18 on this machine, and gradcam never downloads. Put the file "
        f"{RESNET18_FILE} (from https://download.pytorch.org/models/{RESNET18_FILE}) at {expected_path}, "
        "or pass --weights FILE."
    )
    with pytest.raises(ModelLoadError) as info:
        load_model("torchvision:resnet18")
    assert str(info.value) == message


def test_torchvision_unknown_name_suggests() -> None:
    with pytest.raises(ModelLoadError, match=r"classification model 'resnet51'\. Did you mean: resnet50"):
        load_model("torchvision:resnet51")


@pytest.fixture(scope="module")
def resnet18_random() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_torchvision_weights_file_round_trip(tmp_path: Path, resnet18_random: nn.Module) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18_random.state_dict(), path)
    loaded = load_model("torchvision:resnet18", weights=path)
    assert loaded.name == "torchvision:resnet18"
    assert loaded.preprocess == IMAGENET_PREPROCESS
    assert loaded.labels is not None and loaded.labels[0] == "tench" and len(loaded.labels) == 1000
    assert loaded.default_layer == "layer4"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), resnet18_random(x), atol=0, rtol=0)


def test_torchvision_checkpoint_with_module_prefix_and_hub_cache(
    no_downloads: Path, resnet18_random: nn.Module
) -> None:
    cached = no_downloads / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    state = {f"module.{k}": v for k, v in resnet18_random.state_dict().items()}
    torch.save({"epoch": 3, "model": state}, cached)
    rows = {r["name"]: r for r in list_models()}
    assert rows["torchvision:resnet18"]["available"] is True
    loaded = load_model("torchvision:resnet18")  # found in the cache, no --weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), resnet18_random(x), atol=0, rtol=0)


def test_torchvision_finetuned_head_and_wrong_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18_10.pth"
    torch.save(small.state_dict(), path)
    loaded = load_model("torchvision:resnet18", weights=path)
    assert loaded.labels is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), small(x), atol=0, rtol=0)
    labels = tmp_path / "ten.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    with_labels = load_model("torchvision:resnet18", weights=path, labels=labels)
    assert with_labels.labels == [f"class {i}" for i in range(10)]

    other = tmp_path / "tiny.pth"
    torch.save(_tiny().state_dict(), other)
    with pytest.raises(ModelLoadError, match=r"do not fit the model \(ResNet\); missing keys: conv1.weight"):
        load_model("torchvision:resnet18", weights=other)


def test_torchvision_old_densenet_keys_and_versioned_modules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    densenet = torchvision.models.densenet121().eval()
    old = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.(weight|bias|running_mean|running_var)$")
    state = OrderedDict(  # the key style of torchvision's published DenseNet files
        (old.sub(r"\1.\2.\3", k), v) for k, v in densenet.state_dict().items() if "num_batches" not in k
    )
    assert any(".norm.1." in k for k in state)
    torch.save(state, tmp_path / "densenet.pth")
    loaded = load_model("torchvision:densenet121", weights=tmp_path / "densenet.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), densenet(x), atol=0, rtol=0)
    # MNASNet's loader needs the state dict's version metadata: kept through 'module.' stripping
    mnasnet = torchvision.models.mnasnet0_5().eval()
    plain = mnasnet.state_dict()
    wrapped = OrderedDict((f"module.{k}", v) for k, v in plain.items())
    wrapped._metadata = OrderedDict((f"module.{k}" if k else "module", v) for k, v in plain._metadata.items())
    torch.save({"state_dict": wrapped}, tmp_path / "mnasnet.pth")
    loaded = load_model("torchvision:mnasnet0_5", weights=tmp_path / "mnasnet.pth")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), mnasnet(x), atol=0, rtol=0)


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load_state_dict_file(tmp_path / "absent.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 1, "note": "no tensors"}, odd)
    with pytest.raises(ModelLoadError, match="does not hold a state dict"):
        load_state_dict_file(odd)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "obj": TinyNet}, unsafe)
    pattern = (
        r"weights_only=True\): it pickles a Python object \(Unsupported global: GLOBAL [\w.]*TinyNet\)"
        r".*torch.save\(model.state_dict\(\), PATH\)"
    )
    with pytest.raises(ModelLoadError, match=pattern):
        load_state_dict_file(unsafe)


# --------------------------------------------------------------------------------------------- timm


def test_timm_missing_says_install_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelLoadError, match=r'pip install "gradcam\[timm\]"'):
        load_model("timm:resnet18")


def test_timm_with_weights(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    with pytest.raises(ModelLoadError, match="needs --weights FILE"):
        load_model("timm:resnet18")
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "timm_r18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = load_model("timm:resnet18", weights=path)
    assert loaded.default_layer == "layer4"
    cfg = reference.pretrained_cfg
    assert loaded.preprocess.input_size == cfg["input_size"][-1] == 224
    assert loaded.preprocess.resize_size == int(224 / cfg["crop_pct"])
    assert loaded.preprocess.interpolation == cfg["interpolation"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x), atol=0, rtol=0)


# ------------------------------------------------------------------------- TorchScript, export, factories


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_round_trip(tmp_path: Path) -> None:
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "tiny.ts"
    torch.jit.trace(model, x).save(str(path))
    loaded = load_model(str(path))
    assert loaded.preprocess == IMAGENET_PREPROCESS and loaded.labels is None and loaded.default_layer is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), atol=0, rtol=0)


def test_torch_export_round_trip(tmp_path: Path) -> None:
    model = _tiny()
    x = torch.randn(1, 3, 48, 48)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(str(path))
    assert loaded.preprocess.input_size == 48  # the exported input size is fixed
    assert "features" in dict(loaded.model.named_modules())  # names kept for Grad-CAM hooks
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), atol=0, rtol=0)


def test_weights_file_given_as_model_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(ModelLoadError, match="looks like a weights file"):
        load_model(str(path))


def test_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_gradcam_models.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("my_gradcam_models:build")
    assert loaded.name == "my_gradcam_models:build"
    assert loaded.preprocess == IMAGENET_PREPROCESS and loaded.labels is None
    assert loaded.model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(ModelLoadError, match=r"not_a_model\(\) returned int, expected a torch.nn.Module"):
        load_model("my_gradcam_models:not_a_model")
    with pytest.raises(ModelLoadError, match="has no attribute 'missing'"):
        load_model("my_gradcam_models:missing")
    with pytest.raises(ModelLoadError, match="cannot import module"):
        load_model("no_such_module_xyz:build")


def test_file_factory_labels_and_weights(tmp_path: Path) -> None:
    file = tmp_path / "net.py"
    file.write_text(FACTORY_SOURCE)
    spec = f"{file}:build"
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n\n")
    loaded = load_model(spec, labels=labels)
    assert loaded.labels == ["cat", "dog", "bird"]
    bad = tmp_path / "bad_labels.txt"
    bad.write_text("cat\ndog\n")
    with pytest.raises(ModelLoadError, match="has 2 labels but the model has 3 outputs"):
        load_model(spec, labels=bad)
    # weights are applied on top of what the factory built
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) for k, v in loaded.model.state_dict().items()}
    weights = tmp_path / "w.pth"
    torch.save(state, weights)
    reloaded = load_model(spec, weights=weights)
    assert torch.equal(reloaded.model.state_dict()["4.bias"], state["4.bias"])


def test_factory_returning_loaded_model(tmp_path: Path) -> None:
    file = tmp_path / "full.py"
    file.write_text(
        textwrap.dedent(
            """
            from torch import nn
            from gradcam.imaging.geometry import PreprocessConfig
            from gradcam.models import LoadedModel

            def make():
                model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                return LoadedModel(model.train(), "mine", PreprocessConfig(input_size=32, resize_size=40),
                                   ["a", "b"], "0")
            """
        )
    )
    loaded = load_model(f"{file}:make")
    assert (loaded.name, loaded.labels, loaded.default_layer) == ("mine", ["a", "b"], "0")
    assert loaded.preprocess.input_size == 32 and not loaded.model.training


def test_unknown_specs(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model spec 'resnet50'"):
        load_model("resnet50")
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(str(tmp_path / "missing.pt2"))
    with pytest.raises(ModelLoadError, match="Python file not found"):
        load_model(f"{tmp_path / 'nope.py'}:build")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"neither a TorchScript archive nor a torch\.export"):
        load_model(str(garbage))


def test_list_models() -> None:
    rows = list_models()
    assert rows[0]["name"] == "efficientnet_lite0" and rows[0]["available"] is True
    assert all(set(r) == {"name", "source", "available", "note"} for r in rows)
    tv = {r["name"]: r for r in rows if r["source"] == "torchvision"}
    assert {"torchvision:resnet50", "torchvision:vgg16", "torchvision:convnext_tiny"} <= set(tv)
    assert tv["torchvision:resnet50"]["available"] is False
    assert "--weights FILE" in tv["torchvision:resnet50"]["note"]
