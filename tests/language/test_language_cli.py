"""``gradcam caption`` and ``gradcam vqa`` end to end on held-out synthetic scenes (shipped weights)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from gradcam.cli import main
from gradcam.language.scenes import HELDOUT_SEED, make_scene
from tolerances import gamma, unit_roundoff


def test_caption_command_generates_explains_and_writes(tmp_path, capsys) -> None:
    scene = make_scene(HELDOUT_SEED, 5)
    assert main(["caption", "--scene", "5", "--out", str(tmp_path), "--tile", "96"]) == 0
    report = json.loads((tmp_path / "scene5.caption.json").read_text())
    assert report["caption"] == scene.caption  # the shipped captioner gets held-out scenes right
    assert report["words"] == scene.caption.split()
    maps = np.load(tmp_path / report["files"]["gradcam"])
    guided = np.load(tmp_path / report["files"]["guided_gradcam"])
    assert maps.shape == (len(report["words"]), 64, 64) and guided.shape == (len(report["words"]), 3, 64, 64)
    assert np.allclose(maps.max(axis=(1, 2)), 1.0)  # every word's map is normalised to a maximum of 1
    panel = Image.open(tmp_path / report["files"]["panel"])
    assert panel.width > panel.height  # one column per word, two rows
    assert f"caption: {scene.caption}" in capsys.readouterr().out


def test_caption_command_explains_a_given_caption_from_an_image_file(tmp_path) -> None:
    scene = make_scene(HELDOUT_SEED, 5)
    assert main(["caption", "--scene", "5", "--out", str(tmp_path / "a"), "--no-guided"]) == 0
    image = tmp_path / "a" / "scene5.png"
    wrong = scene.caption.replace(scene.objects[0].colour, "yellow" if scene.objects[0].colour != "yellow" else "red")
    assert main(["caption", str(image), "--caption", wrong, "--out", str(tmp_path / "b"), "--no-guided"]) == 0
    report = json.loads((tmp_path / "b" / "scene5.caption.json").read_text())
    assert report["given"] and report["caption"] == wrong
    right = json.loads((tmp_path / "a" / "scene5.caption.json").read_text())
    # the wrong colour word (position 3) is far less likely than the right one
    assert report["log_probs"][2] < right["log_probs"][2] - 3


def test_caption_command_errors_are_clear(tmp_path, capsys) -> None:
    assert main(["caption", "--scene", "1", "--caption", "a small dog", "--out", str(tmp_path)]) == 2
    assert "'dog'" in capsys.readouterr().err
    assert main(["caption", "--out", str(tmp_path)]) == 2
    assert "exactly one of IMAGE or --scene" in capsys.readouterr().err
    assert main(["caption", "--scene", "1", "--beam", "0", "--out", str(tmp_path)]) == 2
    assert "--beam must be >= 1" in capsys.readouterr().err


def test_vqa_command_answers_lists_and_maps(tmp_path, capsys) -> None:
    scene = make_scene(HELDOUT_SEED, 7)
    target = scene.objects[0]
    question = f"what color is the {target.shape}?"
    assert main(["vqa", "--scene", "7", "--question", question, "--out", str(tmp_path), "--counterfactual"]) == 0
    out = capsys.readouterr().out
    assert f"answer: {target.colour}" in out
    report = json.loads((tmp_path / "scene7.vqa.json").read_text())
    assert report["predicted"] == target.colour and report["top"][0]["answer"] == target.colour
    probabilities = [t["probability"] for t in report["top"]]
    # float32 softmax values over the model's 10 answers add to 1 within the rounding of their sum and quotients
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 + 2 * gamma(10) + 8 * unit_roundoff()
    cam = np.load(tmp_path / report["files"]["gradcam"])
    counter = np.load(tmp_path / report["files"]["counterfactual"])
    assert cam.shape == counter.shape == (64, 64)
    assert not np.allclose(cam, counter)


def test_vqa_command_explains_another_answer_and_rejects_unknown_ones(tmp_path, capsys) -> None:
    shape = make_scene(HELDOUT_SEED, 7).objects[0].shape
    args = ["vqa", "--scene", "7", "-q", f"what size is the {shape}", "--answer", "large", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "scene7.vqa.json").read_text())
    assert report["explained"] == "large"
    assert main([*args[:-4], "--answer", "huge", "--out", str(tmp_path)]) == 2
    assert "'huge'" in capsys.readouterr().err
    assert main(["vqa", "--scene", "7", "-q", "what colour is the dog", "--out", str(tmp_path)]) == 2
    assert "'dog'" in capsys.readouterr().err
