"""Options and helpers shared by several commands (model loading, device, targets)."""

from __future__ import annotations

import argparse

import torch

from ..models import DEFAULT_MODEL, LoadedModel, ModelLoadError, class_index, load_model


class CLIError(Exception):
    """A usage problem: ``main`` prints ``gradcam: error: <message>`` and exits with code 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="efficientnet_lite0 (default, offline ImageNet weights), torchvision:NAME, timm:NAME, "
        "a TorchScript/.pt2 file, or module:factory (see `gradcam models`)",
    )
    parser.add_argument("--weights", help="weights file (state dict or checkpoint) for the model")
    parser.add_argument("--labels", help="class labels file, one per line (for models without ImageNet labels)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device (cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda asked for, but no CUDA device is available")
    return device


def load_or_exit(args: argparse.Namespace) -> LoadedModel:
    """Load the model named by the common options (CLIError with the loader's message)."""
    try:
        return load_model(args.model, weights=args.weights, device="cpu", labels=args.labels)
    except ModelLoadError as error:
        raise CLIError(str(error)) from None


def parse_class(value: str, loaded: LoadedModel, option: str) -> int:
    """One class given as an index or a label name (CLIError naming ``option`` and the bad value)."""
    if loaded.labels is None:
        if not value.strip().isdigit():
            raise CLIError(f"{option} {value!r}: this model has no labels; give a class index or pass --labels FILE")
        return int(value)
    try:
        return class_index(value, loaded.labels)
    except (ValueError, KeyError, IndexError) as error:
        raise CLIError(f"{option} {value!r}: {error}") from None


def parse_targets(values: list[str] | None, loaded: LoadedModel) -> tuple[int, ...] | None:
    """``--target`` values (indices or class names) as class indices (CLIError naming the bad value)."""
    if not values:
        return None
    return tuple(parse_class(value, loaded, "--target") for value in values)
