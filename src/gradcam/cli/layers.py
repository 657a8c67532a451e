"""``gradcam layers MODEL``: the candidate layers, their output shapes and the automatic choice.

The automatic choice is :func:`gradcam.layers.auto_layer`, the function the explainers (and so
``gradcam explain``) use when no layer is given.
"""

from __future__ import annotations

import argparse

import torch

from ..capture import model_guard
from ..errors import InputError, LayerError
from ..layers import auto_layer
from ._common import RunError, load_or_exit

COMMAND = "layers"
HELP = "list a model's candidate Grad-CAM layers with their output shapes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="efficientnet_lite0", help="model spec (see `gradcam models`)")
    parser.add_argument("--weights", help="weights file")
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--all", action="store_true", help="list every module, not only the candidates")


def run(args: argparse.Namespace) -> int:
    loaded = load_or_exit(argparse.Namespace(model=args.model, weights=args.weights, labels=args.labels))
    size = loaded.preprocess.input_size
    probe = f"1x3x{size}x{size}"
    try:
        with model_guard(loaded.model):
            choice = auto_layer(loaded.model, torch.zeros(1, 3, size, size))
    except InputError as error:  # the model's own forward refused the probe image
        cause = error.__cause__ if error.__cause__ is not None else error
        reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        raise RunError(
            f"{loaded.name}: its forward pass failed on a {probe} image ({type(cause).__name__}: {reason[:300]}); "
            "gradcam explains models that take (B, 3, H, W) RGB images: wrap the model so that it does"
        ) from None
    except LayerError:
        raise RunError(
            f"{loaded.name} has no candidate Grad-CAM layer: no module outputs a (B, K, u, v) feature map with "
            f"u*v > 1 for a {probe} image (`gradcam layers {args.model} --all` lists every module); Grad-CAM needs "
            "a convolutional feature map, or a reshape of token outputs to a grid (the Python API's reshape=)"
        ) from None
    auto = choice.name
    used = loaded.default_layer or auto
    seen = set()
    print(f"{loaded.name}: output shapes for a {probe} input, in the order modules finish")
    for info in choice.infos:
        if info.name in seen or not (args.all or info.candidate or info.name in (auto, used)):
            continue
        seen.add(info.name)
        marks = []
        if info.name == auto:
            marks.append(f"<- automatic choice ({choice.rule})")
        if info.name == loaded.default_layer:
            marks.append("<- model default")
        shape = "x".join(str(d) for d in (1, *info.shape[1:]))
        print(f"  {info.name:<40} {info.kind:<24} {shape:<18} {' '.join(marks)}")
    if choice.reshape is not None:
        print(f"automatic choice '{auto}' is re-indexed to a grid by {choice.reshape}")
    print(f"gradcam explain uses '{used}' unless --layer is given")
    return 0
