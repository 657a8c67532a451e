"""Options and helpers shared by several commands (model loading, device, targets)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..models import DEFAULT_MODEL, LoadedModel, ModelLoadError, class_index, load_model


class CLIError(Exception):
    """A usage problem: ``main`` prints ``gradcam COMMAND: error: <message>`` and exits with code 2."""

    exit_code = 2


class RunError(CLIError):
    """The work started and failed (nothing the command line could have said up front): exit code 1."""

    exit_code = 1


def error_message(error: Exception, args: argparse.Namespace) -> str:
    """The one-line message of a library error, naming the option at fault where the library names an argument."""
    message = str(error)
    if isinstance(error, ModelLoadError) and error.argument == "weights" and getattr(args, "weights", None):
        path = str(Path(args.weights).expanduser())
        return f"--weights {message}" if message.startswith(path) else f"--weights {args.weights}: {message}"
    return message


def check_file(path: str | None, option: str) -> None:
    """CLIError unless ``path`` (the value of ``option``; None: not given) is an existing file."""
    if path is None:
        return
    if Path(path).expanduser().is_dir():
        raise CLIError(f"{option} {path} is a folder; expected a file")
    if not Path(path).expanduser().is_file():
        raise CLIError(f"{option} file not found: {path}")


def check_out_folder(path: str, option: str = "--out") -> None:
    """CLIError when the output folder ``path`` is a file, or cannot be made because a parent is a file."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{option} {path} is a file; expected a folder to write the outputs in")
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is not None and not folder.exists() and not parent.is_dir():
        raise CLIError(f"{option} {path} cannot be made: {parent} is a file, not a folder")


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
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:0, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name!r}: gradcam runs on auto, cpu or cuda[:N]; got a {device.type} device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asked for, but no CUDA device is available (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 ...")
    return device


def load_or_exit(args: argparse.Namespace) -> LoadedModel:
    """Load the model named by the common options (CLIError with the loader's message)."""
    check_file(args.weights, "--weights")
    check_file(args.labels, "--labels")
    try:
        return load_model(args.model, weights=args.weights, device="cpu", labels=args.labels)
    except ModelLoadError as error:
        raise CLIError(error_message(error, args)) from None


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
