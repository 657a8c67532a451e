"""``hf:FOLDER``: a saved Hugging Face image-text model (CLIP, SigLIP) as an image-embedding model
with a text encoder; never downloaded (``hf`` extra)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gradcam.imaging.geometry import PreprocessConfig

from ..loaded import LoadedModel, LoadRequest, ModelLoadError, finish
from ..weights import load_into, load_state_dict_file, short_reason

#: CLIP's preprocessing (used when a checkpoint folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# What transformers' from_pretrained raises for a folder it cannot load.
_HF_ERRORS = (OSError, ValueError, KeyError)


def hf_image_preprocess(folder: Path, image_size: int) -> PreprocessConfig:
    """Resize / crop / mean / std from a saved ``preprocessor_config.json`` (CLIP's defaults without one)."""
    size, crop, mean, std, interpolation = image_size, image_size, CLIP_MEAN, CLIP_STD, "bicubic"
    config_file = folder / "preprocessor_config.json"
    if config_file.is_file():
        try:
            data = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {config_file}: {exc}") from exc
        resize = data.get("size", size)
        size = int(resize.get("shortest_edge", resize.get("height", size)) if isinstance(resize, dict) else resize)
        cropped = data.get("crop_size", size) if data.get("do_center_crop", True) else size
        crop = int(cropped.get("height", size) if isinstance(cropped, dict) else cropped)
        mean = tuple(float(v) for v in data.get("image_mean", mean))
        std = tuple(float(v) for v in data.get("image_std", std))
        interpolation = _PIL_RESAMPLE.get(data.get("resample", 3), "bicubic")
    return PreprocessConfig(input_size=crop, resize_size=size, mean=mean, std=std, interpolation=interpolation)


def _from_folder(spec: str, folder: Path) -> Any:
    import transformers

    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{spec}: no Hugging Face checkpoint in {folder} (config.json not found). gradcam never downloads: "
            "save one where there is a network, e.g. CLIPModel.from_pretrained('openai/clip-vit-base-patch32')"
            f".save_pretrained('{folder}') and the same with CLIPProcessor, then copy the folder here"
        )
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except _HF_ERRORS as exc:
        raise ModelLoadError(f"{spec}: cannot load the checkpoint in {folder}: {short_reason(exc)}") from exc
    if not all(callable(getattr(model, m, None)) for m in ("get_image_features", "get_text_features")):
        raise ModelLoadError(
            f"{spec} is a {type(model).__name__}; hf:FOLDER supports image-text models with "
            "get_image_features and get_text_features (CLIP, SigLIP)"
        )
    return model


def _text_encoder(spec: str, folder: Path, model: Any) -> Any:
    """``texts -> (k, D)`` prompt embeddings with the folder's tokenizer (read on first use)."""
    import transformers

    from gradcam.targets import text_embedding

    tokenizer: list[Any] = []

    def encode(texts: Sequence[str]) -> torch.Tensor:
        if not tokenizer:
            try:
                tokenizer.append(transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
            except _HF_ERRORS as exc:
                raise ModelLoadError(
                    f"{spec}: no tokenizer in {folder} ({short_reason(exc)}); save it with the model "
                    "(AutoTokenizer.from_pretrained(NAME).save_pretrained(FOLDER)) or pass --embedding FILE"
                ) from exc
        return text_embedding(model, list(texts), tokenizer=tokenizer[0])

    return encode


def load(target: str, request: LoadRequest) -> LoadedModel:
    """The image-text checkpoint in folder ``target``; ``request.labels`` does not apply (embeddings)."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f'{request.spec} needs transformers, an optional extra: pip install "gradcam[hf]"'
        ) from exc
    from gradcam.targets import KeywordImageInput

    folder = Path(target).expanduser()
    model = _from_folder(request.spec, folder)
    if request.weights is not None:
        load_into(model, load_state_dict_file(request.weights), str(request.weights))
    vision = getattr(model.config, "vision_config", model.config)
    size = getattr(vision, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    adapter = KeywordImageInput(model, method="get_image_features")
    return finish(
        adapter, request.spec, hf_image_preprocess(folder, size), LoadRequest(request.spec, device=request.device),
        task="embedding", text_encoder=_text_encoder(request.spec, folder, model),
    )  # layer: None, the automatic choice; labels: none for an embedding  # fmt: skip
