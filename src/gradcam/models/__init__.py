"""Models for Grad-CAM: the offline default (EfficientNet-Lite0), torchvision, timm and your own.

``load_model(spec)`` returns a :class:`LoadedModel` holding the module (eval mode), the preprocessing it
expects, its class labels and a good default Grad-CAM layer. Nothing is ever downloaded.
"""

from __future__ import annotations

from .labels import class_index, imagenet_labels, imagenet_synsets, read_labels_file
from .loaded import (
    IMAGENET_PREPROCESS,
    LITE0_PREPROCESS,
    MODEL_TASKS,
    LoadedModel,
    ModelLoadError,
    WholeImagePreprocess,
)
from .loading import list_models, load_model
from .sources.tv import torchvision_weights_cache_path
from .spec import DEFAULT_MODEL
from .weights import load_state_dict_file

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_PREPROCESS",
    "LITE0_PREPROCESS",
    "MODEL_TASKS",
    "LoadedModel",
    "ModelLoadError",
    "WholeImagePreprocess",
    "class_index",
    "imagenet_labels",
    "imagenet_synsets",
    "list_models",
    "load_model",
    "load_state_dict_file",
    "read_labels_file",
    "torchvision_weights_cache_path",
]
