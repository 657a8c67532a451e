"""Getting one input image for the caption / vqa commands: a file, or a rendered synthetic scene."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import GradCAMError
from ..imaging.geometry import Geometry, PreprocessConfig, preprocess
from ..imaging.io import load_image
from .loading import LanguageModel, load_language_model
from .scenes import HELDOUT_SEED, make_scene, render


class CommandError(GradCAMError):
    """A bad command-line choice, reported as ``gradcam COMMAND: error: ...`` (exit code 2)."""


def scene_image(index: int) -> Image.Image:
    """Held-out synthetic scene ``index`` as an 8-bit RGB PIL image (64 x 64)."""
    if index < 0:
        raise CommandError(f"--scene must be >= 0; got {index}")
    pixels = render(make_scene(HELDOUT_SEED, index)).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


def load_input(
    path: str | None, scene: int | None, config: PreprocessConfig, device: torch.device
) -> tuple[Image.Image, torch.Tensor, Geometry, str]:
    """(original image, model input (1, C, H, W) on ``device``, its geometry, a file stem for outputs)."""
    if (path is None) == (scene is None):
        raise CommandError("give exactly one of IMAGE or --scene N")
    if scene is not None:
        image, stem = scene_image(scene), f"scene{scene}"
    else:
        image, stem = load_image(path), Path(path).stem
    x, geometry = preprocess(image, config)
    return image, x[None].to(device), geometry, stem


def load_model_or_fail(task: str, spec: str, weights: str | None, device: torch.device) -> LanguageModel:
    """:func:`load_language_model`, with a missing shipped-weights file or extra turned into CommandError."""
    try:
        return load_language_model(task, spec, weights, device)
    except (FileNotFoundError, ImportError) as error:
        raise CommandError(str(error)) from None
