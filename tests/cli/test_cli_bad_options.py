"""Every sub-command and every option that takes a value, given bad values: one error line, no traceback.

``main`` runs in-process; each case must end with exit code 2 (a bad command line: nothing was done) or 1
(the work started and failed), exactly one ``gradcam COMMAND: error: ...`` line on stderr that names the
option or file at fault, and no "Traceback". A completeness test checks that the sweep covers every
option of every command, so a new option needs a case here.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from gradcam.cli import build_parser, main
from gradcam.language.models import load_captioner, weights_path
from gradcam.models import ModelLoadError, load_model, load_state_dict_file

FACTORIES = '''
from torch import nn


def mlp():
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))


def gray():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def maxhead():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 6))
'''

ERROR_LINE = re.compile(r"^gradcam(?: [a-z]+)?: error: ", re.MULTILINE)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(18), dtype=torch.uint8)
    data = b"\xdd" + bytes(noise.tolist())  # random bytes, from a byte that is no pickle opcode (221)
    (root / "random.bin").write_bytes(data)
    (root / "random.pt").write_bytes(data)
    (root / "notimage.png").write_text("hello")
    (root / "dir").mkdir()
    (root / "afile").write_text("I am a file")
    (root / "factories.py").write_text(FACTORIES)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(root / "img.png")
    return {
        "random": str(root / "random.bin"),
        "random_pt": str(root / "random.pt"),
        "notimage": str(root / "notimage.png"),
        "dir": str(root / "dir"),
        "file": str(root / "afile"),
        "missing": str(root / "missing.png"),
        "factories": str(root / "factories.py"),
        "img": str(root / "img.png"),
        "out": str(root / "out"),
        "vqa_weights": str(weights_path("vqa")),
        "captioner_weights": str(weights_path("captioner")),
    }


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check(argv_template: str, code: int, message: str, files: dict[str, str], capsys) -> None:
    """``message`` is the whole error line after ``gradcam COMMAND: error: ``; ``...`` at its end: a prefix."""
    argv = [part.format(**files).replace("<empty>", "") for part in argv_template.split()]
    got, _, err = run(argv, capsys)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, err
    expected = f"gradcam {argv[0]}: error: {message.format(**files)}"
    if expected.endswith("..."):
        assert lines[0].startswith(expected[:-3]), lines[0]
    else:
        assert lines[0] == expected
    assert got == code, err


# (argv with {placeholders} from ``files``; <empty> is an empty argument), exit code, the error message
CAPTION = [
    ("caption --scene 0 --max-len -3 --out {out}", 2, "--max-len must be >= 1 (words); got -3"),
    ("caption --scene 0 --max-len 0 --out {out}", 2, "--max-len must be >= 1 (words); got 0"),
    ("caption --scene 0 --max-len two --out {out}", 2, "argument --max-len: invalid int value: 'two'"),
    ("caption --scene 0 --caption a --max-len 3 --out {out}", 2,
     "--max-len limits a generated caption; it cannot be combined with --caption"),
    ("caption --scene 0 --beam 0 --out {out}", 2, "--beam must be >= 1; got 0"),
    ("caption --scene 0 --beam -2 --out {out}", 2, "--beam must be >= 1; got -2"),
    ("caption --scene 0 --caption a --beam 3 --out {out}", 2,
     "--beam generates a caption; it cannot be combined with --caption"),
    ("caption --scene 0 --caption zzz --out {out}", 2,
     "caption has words the caption vocabulary does not know: 'zzz'; known words: a small large red green blue "
     "yellow purple circle square triangle left of right above below"),
    ("caption --scene 0 --caption <empty> --out {out}", 2, "caption is empty; expected words such as ..."),
    ("caption --scene -1 --out {out}", 2, "--scene must be >= 0; got -1"),
    ("caption --scene x --out {out}", 2, "argument --scene: invalid int value: 'x'"),
    ("caption {img} --scene 1 --out {out}", 2, "give exactly one of IMAGE or --scene N"),
    ("caption --out {out}", 2, "give exactly one of IMAGE or --scene N"),
    ("caption {missing} --out {out}", 2, "cannot read image '{missing}': no such file"),
    ("caption {notimage} --out {out}", 2, "cannot read image '{notimage}': not an image file (unrecognised format)"),
    ("caption {dir} --out {out}", 2, "cannot read image '{dir}': not a regular file"),
    ("caption --scene 0 --weights {random} --out {out}", 2,
     "--weights {random} is not a gradcam captioner weights file (saved by gradcam.language.save_model): "
     "torch.load cannot read it (UnpicklingError: Unsupported operand 221)"),
    ("caption --scene 0 --weights {missing} --out {out}", 2, "--weights file not found: {missing}"),
    ("caption --scene 0 --weights {dir} --out {out}", 2, "--weights {dir} is a folder; expected a file"),
    ("caption --scene 0 --weights {vqa_weights} --out {out}", 2,
     "--weights {vqa_weights} holds gradcam vqa weights; expected captioner weights"),
    ("caption --scene 0 --model nope --out {out}", 2,
     "unknown model 'nope': use 'synthetic' or 'hf:FOLDER' (a local Hugging Face checkpoint)"),
    ("caption --scene 0 --model hf:{dir} --weights {random} --out {out}", 2,
     "--weights applies to --model synthetic; hf:{dir} loads its weights from its folder"),
    ("caption --scene 0 --out {file}", 2, "--out {file} is a file; expected a folder to write the outputs in"),
    ("caption --scene 0 --out {file}/sub", 2, "--out {file}/sub cannot be made: {file} is a file, not a folder"),
    ("caption --scene 0 --alpha 2 --out {out}", 2, "--alpha must be in [0, 1]; got 2.0"),
    ("caption --scene 0 --alpha nan --out {out}", 2, "--alpha must be in [0, 1]; got nan"),
    ("caption --scene 0 --colormap nope --out {out}", 2,
     "argument --colormap: invalid choice: 'nope' (choose from ..."),
    ("caption --scene 0 --tile 0 --out {out}", 2, "--tile must be in [1, 4096] pixels; got 0"),
    ("caption --scene 0 --tile -160 --out {out}", 2, "--tile must be in [1, 4096] pixels; got -160"),
    ("caption --scene 0 --tile 100000 --out {out}", 2, "--tile must be in [1, 4096] pixels; got 100000"),
    ("caption --scene 0 --device nope --out {out}", 2,
     "--device 'nope' is not a device (auto, cpu, cuda, cuda:0, ...)"),
    ("caption --scene 0 --device meta --out {out}", 2,
     "--device 'meta': gradcam runs on auto, cpu or cuda[:N]; got a meta device"),
]  # fmt: skip
VQA = [
    ("vqa --scene 0 -q what --top 0 --out {out}", 2, "--top must be >= 1; got 0"),
    ("vqa --scene 0 -q what --top -1 --out {out}", 2, "--top must be >= 1; got -1"),
    ("vqa --scene 0 -q what --answer huge --out {out}", 2,
     "--answer 'huge' is not one of synthetic-vqa's answers: red, green, blue, yellow, purple, circle, square, "
     "triangle, small, large"),
    ("vqa --scene 0 -q what --answer <empty> --out {out}", 2,
     "--answer is empty; give one of the model's answers, or leave it out for the model's own"),
    ("vqa --scene 0 --question <empty> --out {out}", 2,
     "--question is empty; ask about the image, e.g. \"what colour is the circle?\""),
    ("vqa --scene 0 -q what?colour!dog --out {out}", 2,
     "question has words the question vocabulary does not know: 'dog'; known words: what colour shape size is the "
     "object red green blue yellow purple circle square triangle left of right above below"),
    ("vqa --scene 0 --out {out}", 2, "the following arguments are required: --question/-q"),
    ("vqa --scene -3 -q what --out {out}", 2, "--scene must be >= 0; got -3"),
    ("vqa {random} -q what --out {out}", 2, "cannot read image '{random}': not an image file (unrecognised format)"),
    ("vqa --scene 0 -q what --weights {captioner_weights} --out {out}", 2,
     "--weights {captioner_weights} holds gradcam captioner weights; expected vqa weights"),
    ("vqa --scene 0 -q what --weights {random} --out {out}", 2,
     "--weights {random} is not a gradcam vqa weights file (saved by gradcam.language.save_model): "
     "torch.load cannot read it (UnpicklingError: Unsupported operand 221)"),
    ("vqa --scene 0 -q what --weights {missing} --out {out}", 2, "--weights file not found: {missing}"),
    ("vqa --scene 0 -q what --tile 0 --out {out}", 2, "--tile must be in [1, 4096] pixels; got 0"),
    ("vqa --scene 0 -q what --colormap rainbow --out {out}", 2,
     "argument --colormap: invalid choice: 'rainbow' (choose from ..."),
    ("vqa --scene 0 -q what --alpha -0.5 --out {out}", 2, "--alpha must be in [0, 1]; got -0.5"),
    ("vqa --scene 0 -q what --device cuda:x --out {out}", 2,
     "--device 'cuda:x' is not a device (auto, cpu, cuda, cuda:0, ...)"),
    ("vqa --scene 0 -q what --model resnet50 --out {out}", 2,
     "unknown model 'resnet50': use 'synthetic' or 'hf:FOLDER' (a local Hugging Face checkpoint)"),
    ("vqa --scene 0 -q what --out {file}", 2, "--out {file} is a file; expected a folder to write the outputs in"),
]  # fmt: skip
EXPLAIN = [
    ("explain {img} --out {out} --weights {random}", 2,
     "--weights {random} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
     ".safetensors file): torch.load cannot read it (UnpicklingError: Unsupported operand 221)"),
    ("explain {img} --out {out} --weights {dir}", 2, "--weights {dir} is a folder; expected a file"),
    ("explain {img} --out {out} --weights {missing}", 2, "--weights file not found: {missing}"),
    ("explain {img} --out {out} --model {random_pt}", 2,
     "{random_pt} is neither a TorchScript archive nor a torch.export .pt2 file (torch.jit.load: "
     "PytorchStreamReader failed reading zip archive: failed finding central directory; torch.export.load: "
     "BadZipFile: File is not a zip file). Expected a model saved with torch.jit.save or torch.export.save."),
    ("explain {img} --out {out} --model nosuchmodel", 2, "unknown model spec 'nosuchmodel': ..."),
    ("explain {img} --out {out} --labels {dir}", 2, "--labels {dir} is a folder; expected a file"),
    ("explain {img} --out {out} --labels {missing}", 2, "--labels file not found: {missing}"),
    ("explain {img} --out {out} --labels {random}", 2, "cannot read labels file {random}: ..."),
    ("explain {img} --out {out} --device gpu", 2, "--device 'gpu' is not a device (auto, cpu, cuda, cuda:0, ...)"),
    ("explain {img} --out {out} --layer nope", 2,
     "layer 'nope' not found in EfficientNetLite (`gradcam layers MODEL` or model.named_modules() lists them)"),
    ("explain {img} --out {out} --target -1", 2,
     "--target '-1': class index -1 out of range: the model has 1000 classes (0..999)"),
    ("explain {img} --out {out} --target kitty", 2, "--target 'kitty': unknown class 'kitty'..."),
    ("explain {img} --out {out} --top-k 0", 2, "--top-k must be >= 1; got 0"),
    ("explain {img} --out {out} --top-k 5000", 2,
     "--top-k 5000 asks for more classes than efficientnet_lite0 has (1000)"),
    ("explain {img} --out {out} --task nope", 2, "argument --task: invalid choice: 'nope' (choose from ..."),
    ("explain {img} --out {out} --class 3", 2, "--class applies to --task segmentation, not --task class; for "
     "classifiers use --target"),
    ("explain {img} --out {out} --task segmentation --class 3 --mask {missing}", 2, "--mask file not found: {missing}"),
    ("explain {img} --out {out} --task detection", 2,
     "--task detection needs a detection model; efficientnet_lite0 is a classification model"),
    ("explain {img} --out {out} --task segmentation --class 3", 2,
     "--task segmentation needs (B, classes, H, W) scores; the model gives (1, 1000)"),
    ("explain {img} --out {out} --task similarity --embedding {random}", 2,
     "--embedding must be a .npy or .pt file; got random.bin"),
    ("explain {img} --out {out} --detection -1 --task detection", 2,
     "--detection must be >= 0 (0 is the most confident detection); got -1"),
    ("explain {img} --out {out} --task detection --box 1,2,3", 2,
     "--box must be x0,y0,x1,y1 (4 numbers, original image pixels); got '1,2,3'"),
    ("explain {img} --out {out} --task detection --box nan,0,1,1", 2,
     "--box must be x0,y0,x1,y1 (4 numbers, original image pixels); got 'nan,0,1,1'"),
    ("explain {img} --out {out} --task detection --box 0,0,9,9 --iou-threshold 2", 2,
     "--iou-threshold must be in [0, 1]; got 2.0"),
    ("explain {img} --out {out} --task detection --box 0,0,9,9 --box-weight inf", 2,
     "--box-weight must be a finite number; got inf"),
    ("explain {img} --out {out} --task similarity --embedding {missing}", 2, "--embedding file not found: {missing}"),
    ("explain {img} --out {out} --text cat", 2, "--text applies to --task similarity, not --task class"),
    ("explain {img} --out {out} --method nope", 2, "argument --method: invalid choice: 'nope' (choose from ..."),
    ("explain {img} --out {out} --concepts 0", 2, "--concepts must be >= 1; got 0"),
    ("explain {img} --out {out} --concepts two", 2, "argument --concepts: invalid int value: 'two'"),
    ("explain {img} --out {file}", 2, "--out {file} is a file; expected a folder to write the outputs in"),
    ("explain {img} --out {out} --batch-size 0", 2, "--batch-size must be >= 1; got 0"),
    ("explain {img} --out {out} --workers -1", 2, "--workers must be >= 0 (0: threads in this process); got -1"),
    ("explain {img} --out {out} --writers -2", 2, "--writers must be >= 0 (0: threads in this process); got -2"),
    ("explain {img} --out {out} --alpha 1.5", 2, "--alpha must be in [0, 1]; got 1.5"),
    ("explain {img} --out {out} --colormap nope", 2, "argument --colormap: invalid choice: 'nope' (choose from ..."),
    ("explain {img} --out {out} --outputs video", 2,
     "--outputs takes a comma-separated subset of overlay,heatmap,panel,raw; got 'video'"),
    ("explain {img} --out {out} --picture-format gif", 2,
     "argument --picture-format: invalid choice: 'gif' (choose from ..."),
    ("explain {missing} --out {out}", 2, "no such file or folder: '{missing}'"),
    ("explain {dir} --out {out}", 2,
     "no image files in {dir} (looked for .bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"),
    ("explain --out {out}", 2, "give image files, folders or globs (or --samples for the bundled photos)"),
    ("explain {random} --out {out} --outputs heatmap --quiet --workers 0", 1,
     "1 of 1 images failed (the lines above say why)"),
    ("explain {img} --out {out} --model {factories}:gray --outputs heatmap", 2,
     "x has 3 channels but the model's first convolution '0' expects 1; x must be (B, 1, H, W)"),
]  # fmt: skip
LAYERS = [
    ("layers {factories}:mlp", 1,
     "{factories}:mlp has no candidate Grad-CAM layer: no module outputs a (B, K, u, v) feature map with u*v > 1 "
     "for a 1x3x224x224 image (`gradcam layers {factories}:mlp --all` lists every module); Grad-CAM needs a "
     "convolutional feature map, or a reshape of token outputs to a grid (the Python API's reshape=)"),
    ("layers {factories}:gray", 1,
     "{factories}:gray: its forward pass failed on a 1x3x224x224 image (RuntimeError: Given groups=1, weight of "
     "size [4, 1, 3, 3], expected input[2, 3, 224, 224] to have 1 channels, but got 3 channels instead); gradcam "
     "explains models that take (B, 3, H, W) RGB images: wrap the model so that it does"),
    ("layers {factories}:nothing", 2, "{factories} has no attribute 'nothing'"),
    ("layers nosuch", 2, "unknown model spec 'nosuch': ..."),
    ("layers --weights {random}", 2,
     "--weights {random} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
     ".safetensors file): torch.load cannot read it (UnpicklingError: Unsupported operand 221)"),
    ("layers --weights {dir}", 2, "--weights {dir} is a folder; expected a file"),
    ("layers --labels {missing}", 2, "--labels file not found: {missing}"),
    ("layers --bogus", 2, "unrecognized arguments: --bogus"),
]  # fmt: skip
MODELS = [
    ("models --all yes", 2, "unrecognized arguments: yes"),
    ("models --filter x", 2, "unrecognized arguments: --filter x"),
]
EVALUATE = [
    ("evaluate pointing --synthetic --images 2 --method gradcam --layer nope --out {out}", 2,
     "layer 'nope' not found in SyntheticCNN (`gradcam layers MODEL` or model.named_modules() lists them)"),
    ("evaluate nothing --synthetic --out {out}", 2, "argument task: invalid choice: 'nothing' (choose from ..."),
    ("evaluate pointing {dir} --out {out}", 2, "no images found under {dir}"),
    ("evaluate pointing {missing} --out {out}", 2, "no such file or folder: '{missing}'"),
    ("evaluate pointing {dir} --annotations {missing} --out {out}", 2,
     "--annotations {missing} is not a folder; expected the folder of the .xml files"),
    ("evaluate pointing --synthetic --images 0 --out {out}", 2, "--images must be >= 1; got 0"),
    ("evaluate pointing --synthetic --seed -1 --out {out}", 2, "--seed must be >= 0; got -1"),
    ("evaluate pointing --synthetic --weights {random} --out {out}", 2,
     "--weights needs --model (the synthetic CNN uses its shipped weights)"),
    ("evaluate pointing --synthetic --model efficientnet_lite0 --weights {random} --out {out}", 2,
     "--weights {random} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
     ".safetensors file): torch.load cannot read it (UnpicklingError: Unsupported operand 221)"),
    ("evaluate pointing --synthetic --model {random_pt} --out {out}", 2, "{random_pt} is neither a TorchScript ..."),
    ("evaluate pointing --synthetic --model efficientnet_lite0 --labels {dir} --out {out}", 2,
     "--labels {dir} is a folder; expected a file"),
    ("evaluate pointing --synthetic --device vulkan --out {out}", 2,
     "--device 'vulkan': gradcam runs on auto, cpu or cuda[:N]; got a vulkan device"),
    ("evaluate pointing --synthetic --method nope --out {out}", 2,
     "argument --method: invalid choice: 'nope' (choose from ..."),
    ("evaluate pointing --synthetic --out {file}", 2,
     "--out {file} is a file; expected a folder to write the outputs in"),
    ("evaluate pointing --synthetic --batch-size 0 --out {out}", 2, "--batch-size must be >= 1; got 0"),
    ("evaluate pointing --synthetic --figure-images -1 --out {out}", 2, "--figure-images must be >= 0; got -1"),
    ("evaluate faithfulness --synthetic --road-images -1 --out {out}", 2, "--road-images must be >= 0; got -1"),
    ("evaluate faithfulness --synthetic --robustness-samples -2 --out {out}", 2,
     "--robustness-samples must be >= 0; got -2"),
    ("evaluate faithfulness --synthetic --robustness-images -3 --out {out}", 2,
     "--robustness-images must be >= 0; got -3"),
    ("evaluate sanity --synthetic --sanity-images 0 --out {out}", 2, "--sanity-images must be >= 1; got 0"),
    ("evaluate pointing --synthetic --threshold 15 --out {out}", 2,
     "--threshold must be a fraction in [0, 1]; got 15.0"),
    ("evaluate pointing --synthetic --iou 0 --out {out}", 2, "--iou must be in (0, 1]; got 0.0"),
    ("evaluate pointing --synthetic --connectivity 6 --out {out}", 2,
     "argument --connectivity: invalid choice: 6 (choose from 4, 8)"),
    ("evaluate pointing --synthetic --top-k 0 --out {out}", 2, "--top-k must be >= 1; got 0"),
    ("evaluate pointing --synthetic --tolerance -1 --out {out}", 2, "--tolerance must be >= 0 pixels; got -1.0"),
    ("evaluate pointing --synthetic --tolerance nan --out {out}", 2, "--tolerance must be >= 0 pixels; got nan"),
    ("evaluate pointing --synthetic --origin 2 --out {out}", 2,
     "argument --origin: invalid choice: 2 (choose from 0, 1)"),
    ("evaluate faithfulness --synthetic --step 0 --out {out}", 2, "--step must be >= 1; got 0"),
    ("evaluate faithfulness --synthetic --deletion-baseline grey --out {out}", 2,
     "argument --deletion-baseline: invalid choice: 'grey' (choose from ..."),
    ("evaluate faithfulness --synthetic --insertion-baseline x --out {out}", 2,
     "argument --insertion-baseline: invalid choice: 'x' (choose from ..."),
    ("evaluate faithfulness --synthetic --score odds --out {out}", 2,
     "argument --score: invalid choice: 'odds' (choose from ..."),
    ("evaluate faithfulness --synthetic --faithfulness-images 0 --out {out}", 2,
     "--faithfulness-images must be >= 1; got 0"),
    ("evaluate faithfulness --synthetic --patch 0 --out {out}", 2, "--patch must be >= 1; got 0"),
    ("evaluate faithfulness --synthetic --stride -16 --out {out}", 2, "--stride must be >= 1; got -16"),
    ("evaluate faithfulness --synthetic --fill inf --out {out}", 2, "--fill must be a finite number; got inf"),
    ("evaluate adversarial --synthetic --epsilons 1,x --out {out}", 2,
     "--epsilons must be comma-separated pixel levels in [0, 255] (e.g. 0,1,4,16); got '1,x'"),
    ("evaluate adversarial --synthetic --epsilons 300 --out {out}", 2,
     "--epsilons must be comma-separated pixel levels in [0, 255] (e.g. 0,1,4,16); got '300'"),
    ("evaluate adversarial --synthetic --attack bim --out {out}", 2,
     "argument --attack: invalid choice: 'bim' (choose from ..."),
    ("evaluate adversarial --synthetic --steps 0 --out {out}", 2, "--steps must be >= 1; got 0"),
    ("evaluate adversarial --synthetic --step-size nan --out {out}", 2,
     "--step-size must be a positive number of pixel levels; got nan"),
    ("evaluate adversarial --synthetic --attack fgsm --steps 3 --out {out}", 2,
     "--steps, --step-size and --random-start are PGD options; FGSM is one step of eps"),
    ("evaluate adversarial --synthetic --adversarial-class nope --out {out}", 2,
     "--adversarial-class 'nope': unknown class 'nope': not an index, label or synset id"),
    ("evaluate adversarial --synthetic --samples --out {out}", 2,
     "give exactly one of IMAGES (a folder with .xml boxes), --synthetic or --samples"),
    ("evaluate adversarial --synthetic --out {file}", 2,
     "--out {file} is a file; expected a folder to write the outputs in"),
    ("evaluate pointing --synthetic --epsilons 4 --out {out}", 2,
     "--epsilons applies to `gradcam evaluate adversarial`, not to evaluate pointing"),
    ("evaluate pointing --synthetic --images 2 --model {factories}:mlp --method gradcam --no-plots --out {out}", 1,
     "no method could be evaluated (gradcam: LayerError: no layer of Sequential outputs a (B, K, u, v) feature map "
     "with u*v > 1 and the batch on axis 0; ..."),
]  # fmt: skip
CASES = CAPTION + VQA + EXPLAIN + LAYERS + MODELS + EVALUATE


@pytest.mark.parametrize(("argv", "code", "message"), CASES, ids=[c[0].replace(" --out {out}", "") for c in CASES])
def test_bad_option_value_is_one_error_line(argv, code, message, files, capsys) -> None:
    check(argv, code, message, files, capsys)


def test_unknown_command_is_a_usage_error(capsys) -> None:
    code, _, err = run(["nosuchcommand"], capsys)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1  # the choices are quoted or not depending on the Python version
    assert lines[0].startswith("gradcam: error: argument COMMAND: invalid choice: 'nosuchcommand' (choose from ")


def _options_taking_values() -> set[tuple[str, str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = set()
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            if action.option_strings and action.nargs != 0 and action.help != argparse.SUPPRESS:
                found.add((command, max(action.option_strings, key=len)))
    return found


def test_the_sweep_covers_every_option_that_takes_a_value() -> None:
    covered = set()
    for argv, _, _ in CASES:
        words = argv.split()
        covered.update((words[0], word) for word in words[1:] if word.startswith("--"))
    assert _options_taking_values() - covered == set()


def test_a_write_that_fails_while_working_exits_1(files, tmp_path, monkeypatch, capsys) -> None:
    import gradcam.imaging.io as image_io

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(image_io, "save_png_atomic", full_disk)
    code, _, err = run(["caption", "--scene", "0", "--no-guided", "--out", str(tmp_path)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [
        f"gradcam caption: error: [Errno 28] No space left on device: '{tmp_path / 'scene0.png'}'"
    ]


def test_vqa_answer_names_are_matched_ignoring_case(files, capsys) -> None:
    out = Path(files["out"] + "-vqa")
    code, _, err = run(["vqa", "--scene", "7", "-q", "what size is the circle", "--answer", " Large",
                        "--no-guided", "--tile", "32", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "scene7.vqa.json").read_text())["explained"] == "large"


def test_an_evaluate_method_asked_for_and_not_evaluated_exits_1_with_the_table_written(files, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "pointing", "--synthetic", "--images", "2", "--model", f"{files['factories']}:maxhead",
            "--method", "gradcam", "--method", "cam", "--no-plots", "--no-sweep", "--figure-images", "0",
            "--out", str(out)]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1
    assert lines[0].startswith(
        "gradcam evaluate: error: not evaluated: cam (MethodError: this needs a global-average-pooling + linear head"
    )
    assert "| Grad-CAM |" in stdout and (out / "table.md").is_file()  # the methods that worked are reported


# --- library messages behind the command line -------------------------------------------------------------
def test_weights_file_errors_say_what_the_file_is_not(files) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(files["random"])
    assert str(info.value) == (
        f"{files['random']} is not a PyTorch weights file (a state dict or checkpoint saved with torch.save, or a "
        ".safetensors file): torch.load cannot read it (UnpicklingError: Unsupported operand 221)"
    )
    assert info.value.argument == "weights" and "weights_only=False" not in str(info.value)
    with pytest.raises(ModelLoadError, match=f"^{re.escape(files['dir'])} is a folder, not a weights file$"):
        load_state_dict_file(files["dir"])


def test_captioner_weights_errors_name_the_file(files, tmp_path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_captioner(files["vqa_weights"])
    assert str(info.value) == f"{files['vqa_weights']} holds gradcam vqa weights; expected captioner weights"
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(ModelLoadError) as info:
        load_captioner(tensor)
    assert str(info.value) == (
        f"{tensor} is not a gradcam captioner weights file (saved by gradcam.language.save_model); it holds Tensor"
    )


def test_serialized_model_errors_log_nothing(files, caplog) -> None:
    with pytest.raises(ModelLoadError, match="is neither a TorchScript archive nor a torch.export .pt2 file"):
        load_model(files["random_pt"])
    assert [r for r in caplog.records if r.name.startswith("torch")] == []


# --- the installed command: torch's own logging must not reach stderr ---------------------------------------
@pytest.mark.parametrize("command", ["explain", "layers"])
def test_a_random_file_as_model_gives_one_line_on_stderr(command, files) -> None:
    argv = [sys.executable, "-m", "gradcam", command, files["random_pt"] if command == "layers" else files["img"]]
    if command == "explain":
        argv += ["--model", files["random_pt"], "--out", files["out"]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gradcam {command}: error: {files['random_pt']} is neither a TorchScript archive nor a torch.export .pt2 "
        "file (torch.jit.load: PytorchStreamReader failed reading zip archive: failed finding central directory; "
        "torch.export.load: BadZipFile: File is not a zip file). Expected a model saved with torch.jit.save or "
        "torch.export.save."
    ]
