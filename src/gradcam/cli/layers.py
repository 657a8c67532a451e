"""``gradcam layers MODEL``: the candidate layers, their output shapes and the automatic choice."""

from __future__ import annotations

import argparse

import torch

from ..capture import model_guard
from ..errors import LayerError
from ..layers import choose_layer, probe_layers
from ._common import RunError, load_or_exit

COMMAND = "layers"
HELP = "list a model's candidate Grad-CAM layers with their output shapes"
EPILOG = "Exit code 1 when the model's forward pass fails on the 1x3xSxS probe image, or it has no candidate layer."


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
            infos = probe_layers(loaded.model, torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, TypeError, IndexError) as error:  # the model's own forward refused the input
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise RunError(
            f"{loaded.name}: its forward pass failed on a {probe} image ({type(error).__name__}: {reason[:300]}); "
            "gradcam explains models that take (B, 3, H, W) RGB images: wrap the model so that it does"
        ) from None
    try:
        auto = choose_layer(infos, loaded.model)
    except LayerError:
        auto = None
    seen = set()
    print(f"{loaded.name}: output shapes for a {probe} input, in the order modules finish")
    for info in infos:
        if info.name in seen or not (args.all or info.candidate):
            continue
        seen.add(info.name)
        marks = []
        if info.name == auto:
            marks.append("<- automatic choice")
        if info.name == loaded.default_layer:
            marks.append("<- model default")
        shape = "x".join(str(d) for d in info.shape)
        print(f"  {info.name:<40} {info.kind:<24} {shape:<18} {' '.join(marks)}")
    if auto is None:
        listing = f"`gradcam layers {args.model} --all` lists every module"
        listing = "every module is listed above" if args.all else listing
        raise RunError(
            f"{loaded.name} has no candidate Grad-CAM layer: no module outputs a (B, K, u, v) feature map with "
            f"u*v > 1 for a {probe} image ({listing}); Grad-CAM needs a convolutional feature map, or a "
            "reshape of token outputs to a grid (the Python API's reshape=)"
        )
    return 0
