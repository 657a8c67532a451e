"""The loader table (spec -> source), torchvision models built without torchvision's download path
against torchvision's own pretrained build, and the causes kept by every load error."""

from __future__ import annotations

import pickle
import re
import textwrap
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
import torchvision
from torch import nn

from gradcam.models import ModelLoadError, load_model, load_state_dict_file
from gradcam.models.loaded import LoadRequest
from gradcam.models.loading import LOADERS
from gradcam.models.spec import ModelSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
MOCK_IMPORT = re.compile(r"^\s*(from unittest import mock|import unittest\.mock|from unittest\.mock)", re.M)


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty torch home; any attempt to fetch a URL fails the test."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _refuse)


# ------------------------------------------------------------------------------------------ the table


def test_loader_table_dispatches_each_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "net.ts"
    archive.write_bytes(b"")
    cases = {
        "efficientnet_lite0": ModelSpec("builtin", "efficientnet_lite0"),
        " Default ": ModelSpec("builtin", "Default"),
        "torchvision: resnet18": ModelSpec("torchvision", "resnet18"),
        "timm:resnet18": ModelSpec("timm", "resnet18"),
        "hf:~/clip": ModelSpec("hf", "~/clip"),
        str(archive): ModelSpec("serialized", str(archive)),
        "my.pkg.models:build": ModelSpec("factory", "my.pkg.models:build"),
        f"{tmp_path / 'net.py'}:make.inner": ModelSpec("factory", f"{tmp_path / 'net.py'}:make.inner"),
    }
    assert set(LOADERS) == {spec.scheme for spec in cases.values()}
    calls: list[tuple[str, str, LoadRequest]] = []

    def recorder(scheme: str) -> Callable[[str, LoadRequest], Any]:
        return lambda target, request: calls.append((scheme, target, request)) or scheme

    for scheme in LOADERS:
        monkeypatch.setitem(LOADERS, scheme, recorder(scheme))
    for spec, expected in cases.items():
        assert parse_spec(spec) == expected
        calls.clear()
        assert load_model(spec, weights="w.pth", device="meta", labels="l.txt") == expected.scheme
        assert calls == [(expected.scheme, expected.target, LoadRequest(spec.strip(), "w.pth", "meta", "l.txt"))]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  ", "empty model spec"),
        ("missing.pt2", "model file not found: missing.pt2"),
        ("C:model", "unknown model spec 'C:model'"),
        ("resnet50", "unknown model spec 'resnet50'"),
    ],
)
def test_specs_that_name_nothing(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        parse_spec(spec)


# ------------------------------------------------------------------------ torchvision without downloading


def _with_metadata(state: dict[str, torch.Tensor], like: Any) -> OrderedDict[str, torch.Tensor]:
    """A copy of ``state`` carrying ``like``'s ``_metadata`` (module versions), as saved files do."""
    out = OrderedDict(state)
    out._metadata = like._metadata  # type: ignore[attr-defined]
    return out


def _random_state(state: dict[str, torch.Tensor], seed: int) -> OrderedDict[str, torch.Tensor]:
    """``state`` with every float tensor redrawn (running variances positive), so that equal states
    mean the file's tensors went where torchvision puts them; the module versions are kept."""
    generator = torch.Generator().manual_seed(seed)
    out = _with_metadata({}, state)
    for key, value in state.items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            value = value.abs() + 0.5 if key.endswith("running_var") else value
        out[key] = value
    return out


def _published_layout(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Random tensors laid out as torchvision's published file for ``name``: the state dict of the model
    at the moment torchvision's own pretrained build loads its file into it (aux heads, no
    num_batches_tracked under FrozenBatchNorm2d, ...)."""
    seen: list[dict[str, torch.Tensor]] = []

    def capture(self: nn.Module, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        seen.append(self.state_dict())
        return torch.nn.modules.module._IncompatibleKeys([], [])

    with monkeypatch.context() as patch:
        patch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(nn.Module, "load_state_dict", capture)
        torchvision.models.get_model(name, weights=torchvision.models.get_model_weights(name).DEFAULT)
    assert len(seen) == 1
    return _random_state(seen[0], seed=1)


def _reference(name: str, state: OrderedDict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """torchvision's own pretrained build of ``name``, its download answered with ``state``."""
    with monkeypatch.context() as patch:
        patch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: _with_metadata(state, state))
        weights = torchvision.models.get_model_weights(name).DEFAULT
        return torchvision.models.get_model(name, weights=weights).eval()


def _assert_same_as_torchvision(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load ``name`` from a local file and compare it with torchvision's pretrained build of the same
    file: module types, trainable flags, every tensor, aux heads, labels and preprocessing."""
    state = _published_layout(name, monkeypatch)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    reference = _reference(name, state, monkeypatch)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _refuse_download)

    loaded = load_model(f"torchvision:{name}", weights=path)
    model = getattr(loaded.model, "detector", loaded.model)  # detectors come wrapped
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in reference.named_modules()]
    assert [(n, getattr(m, "eps", None)) for n, m in model.named_modules()] == [
        (n, getattr(m, "eps", None)) for n, m in reference.named_modules()
    ]
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == [
        (n, p.requires_grad) for n, p in reference.named_parameters()
    ]
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for attribute in ("transform_input", "aux_logits", "aux_classifier"):
        assert (getattr(model, attribute, None) is None) == (getattr(reference, attribute, None) is None)
        if isinstance(getattr(reference, attribute, None), bool):
            assert getattr(model, attribute) == getattr(reference, attribute)
    assert loaded.labels == list(weights.meta["categories"])
    transforms = weights.transforms()
    if loaded.task == "detection":  # the detector resizes and normalises inside: pixels in [0, 1]
        assert (loaded.preprocess.mean, loaded.preprocess.std) == ((0.0,) * 3, (1.0,) * 3)
        assert loaded.preprocess.input_size == reference.transform.min_size[0]
    elif hasattr(transforms, "mean"):
        assert loaded.preprocess.interpolation == transforms.interpolation.value
        assert loaded.preprocess.mean == tuple(transforms.mean) and loaded.preprocess.std == tuple(transforms.std)
        assert loaded.preprocess.resize_size == transforms.resize_size[0]
        if loaded.task == "classification":
            assert loaded.preprocess.input_size == transforms.crop_size[0]
    return loaded


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet18", "layer4"),
        ("googlenet", "inception5b"),  # aux heads loaded, then dropped; transform_input on
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "detector.backbone.body.16"),  # FrozenBatchNorm2d, frozen stages
        ("deeplabv3_mobilenet_v3_large", "backbone.16"),  # aux_loss head
    ],
)
def test_torchvision_local_weights_match_torchvisions_pretrained_build(
    name: str, layer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _assert_same_as_torchvision(name, tmp_path, monkeypatch).default_layer == layer


def _all_torchvision_models() -> list[str]:
    modules = (torchvision.models, torchvision.models.detection, torchvision.models.segmentation)
    return sorted(name for module in modules for name in torchvision.models.list_models(module=module))


@pytest.mark.slow
@pytest.mark.parametrize("name", _all_torchvision_models())
def test_every_torchvision_model_matches_its_pretrained_build(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _assert_same_as_torchvision(name, tmp_path, monkeypatch)


def _refuse_download(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"download attempted: {args}")


# ---------------------------------------------------------------------------------------- the errors


def _junk(tmp_path: Path, name: str, data: bytes = b"not weights at all\n") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


FACTORIES = textwrap.dedent(
    """
    def broken():
        raise ValueError("no such layer size")
    """
)


def _error_cases(tmp_path: Path) -> list[tuple[Callable[[], object], str, type[BaseException]]]:
    """(call, what its message must name, the type its __cause__ must have)."""
    junk, empty = _junk(tmp_path, "junk.pth"), _junk(tmp_path, "empty.pth", b"")
    bad_safetensors = _junk(tmp_path, "bad.safetensors")
    garbage_model = _junk(tmp_path, "garbage.pt")
    archive = tmp_path / "linear.ts"
    torch.jit.script(nn.Linear(2, 2)).save(str(archive))
    (tmp_path / "factories.py").write_text(FACTORIES)
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('import-time failure')\n")
    labels_dir = tmp_path / "labels_folder.txt"
    labels_dir.mkdir()
    factory = f"{tmp_path / 'factories.py'}:broken"
    safetensors_error = pytest.importorskip("safetensors").SafetensorError
    return [
        (lambda: load_state_dict_file(junk), str(junk), pickle.UnpicklingError),
        (lambda: load_state_dict_file(empty), str(empty), EOFError),
        (lambda: load_state_dict_file(bad_safetensors), str(bad_safetensors), safetensors_error),
        (lambda: load_model(str(garbage_model)), str(garbage_model), Exception),
        (lambda: load_model(factory), factory, ValueError),
        (lambda: load_model(f"{raises}:build"), str(raises), RuntimeError),
        (lambda: load_model("gradcam_no_such_module_xyz:build"), "gradcam_no_such_module_xyz", ImportError),
        (lambda: load_model(str(archive), device="no-such-device"), "no-such-device", RuntimeError),
        (lambda: load_model(str(archive), labels=labels_dir), str(labels_dir), OSError),
        (lambda: load_model("timm:resnet18", weights=junk), str(junk), pickle.UnpicklingError),
        (lambda: load_model("torchvision:resnet18", weights=empty), str(empty), EOFError),
    ]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_every_load_error_names_the_culprit_and_keeps_its_cause(tmp_path: Path, no_downloads: None) -> None:
    for call, culprit, cause in _error_cases(tmp_path):
        with pytest.raises(ModelLoadError) as info:
            call()
        assert culprit in str(info.value), (culprit, str(info.value))
        assert isinstance(info.value.__cause__, cause), (culprit, repr(info.value.__cause__))


def test_torch_load_failures_are_the_documented_exceptions(tmp_path: Path) -> None:
    """Text is a pickle with an unknown opcode ('n': UnpicklingError, 'h': KeyError), an empty file ends
    early (EOFError): each comes back as ModelLoadError for --weights with torch's exception as the cause."""
    with pytest.raises(ModelLoadError) as junk:
        load_state_dict_file(_junk(tmp_path, "junk.pth"))
    with pytest.raises(ModelLoadError) as hello:
        load_state_dict_file(_junk(tmp_path, "hello.pth", b"hello world\n"))
    with pytest.raises(ModelLoadError) as empty:
        load_state_dict_file(_junk(tmp_path, "empty.pth", b""))
    assert (junk.value.argument, hello.value.argument, empty.value.argument) == ("weights",) * 3
    assert isinstance(junk.value.__cause__, pickle.UnpicklingError)
    assert type(hello.value.__cause__) is KeyError and type(empty.value.__cause__) is EOFError


# ------------------------------------------------------------------------------------------ hygiene


def test_lint_rules_keep_src_free_of_mock_and_blind_excepts() -> None:
    """ruff enforces both on src (BLE001: an ``except Exception`` must re-raise; TID251 bans
    unittest.mock); this keeps the rules switched on, and checks the ban holds today."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"BLE001", "TID251"} <= set(config["select"])
    assert "unittest.mock" in config["flake8-tidy-imports"]["banned-api"]
    for ignored in config.get("per-file-ignores", {}):
        assert not ignored.startswith("src"), ignored
    offenders = [
        str(path.relative_to(ROOT)) for path in (ROOT / "src").rglob("*.py") if MOCK_IMPORT.search(path.read_text())
    ]
    assert offenders == []
