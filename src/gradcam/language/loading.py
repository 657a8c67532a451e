"""Loading a captioning or VQA model by name: the shipped synthetic ones, or a local Hugging Face folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..imaging.geometry import PreprocessConfig
from ..models import ModelLoadError
from .models import PREPROCESS, load_captioner, load_vqa

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class LanguageModel:
    """A loaded model (an adapter for Hugging Face ones), the preprocessing it expects, and its name."""

    model: nn.Module
    preprocess: PreprocessConfig
    name: str


def _hf_preprocess(folder: Path, model: nn.Module) -> PreprocessConfig:
    """A square resize to the vision tower's image size with the processor's mean/std (when saved)."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None) or getattr(config, "encoder", None) or config
    size = getattr(vision, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text())
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    return PreprocessConfig(input_size=size, resize_size=size, mean=mean, std=std, interpolation="bicubic")


def load_language_model(
    task: str, spec: str = SYNTHETIC, weights: str | None = None, device: str | torch.device = "cpu"
) -> LanguageModel:
    """``task`` 'caption' or 'vqa'; ``spec`` 'synthetic' (shipped weights, or ``weights``) or 'hf:FOLDER'."""
    if task not in ("caption", "vqa"):
        raise ValueError(f"task must be 'caption' or 'vqa'; got {task!r}")
    if spec == SYNTHETIC:
        model = (load_captioner if task == "caption" else load_vqa)(weights, device)
        return LanguageModel(model, PREPROCESS, f"synthetic-{task}")
    if spec.startswith("hf:"):
        from .hf import load_hf

        folder = Path(spec[3:])
        adapter = load_hf(str(folder), task, device)
        return LanguageModel(adapter, _hf_preprocess(folder, adapter.model), spec)
    raise ModelLoadError(
        f"unknown model {spec!r}: use 'synthetic' or 'hf:FOLDER' (a local Hugging Face checkpoint)"
    )
