"""Bad arguments to the language models' loading and generation: errors that name the argument and the file."""

from __future__ import annotations

import pytest
import torch

from gradcam.errors import GradCAMError, InputError
from gradcam.language.inputs import CommandError, scene_image
from gradcam.language.loading import load_language_model
from gradcam.language.models import PREPROCESS, load_captioner, load_vqa, weights_path
from gradcam.models import ModelLoadError


@pytest.fixture(scope="module")
def captioner():
    return load_captioner()


@pytest.mark.parametrize("max_len", [0, -3, 2.5, True])
def test_generate_refuses_a_max_len_below_one_word(captioner, max_len) -> None:
    images = torch.zeros(1, 3, PREPROCESS.input_size, PREPROCESS.input_size)
    with pytest.raises(InputError) as info:
        captioner.generate(images, max_len=max_len)
    assert str(info.value) == f"max_len must be an integer >= 1 (words); got {max_len!r}"


@pytest.mark.parametrize("beam", [1, 3])
def test_generate_gives_at_most_max_len_words_then_the_end_token(captioner, beam) -> None:
    images = torch.zeros(1, 3, PREPROCESS.input_size, PREPROCESS.input_size)
    full = captioner.token_words(captioner.generate(images, beam=beam)[0])
    assert len(full) > 4  # <bos> + at least 3 words + <eos>: the cut below shortens it
    for max_len in (1, 2):
        words = captioner.token_words(captioner.generate(images, max_len=max_len, beam=beam)[0])
        assert words == [*full[: 1 + max_len], "<eos>"]


def test_load_errors_are_gradcam_errors_naming_the_weights_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_vqa(weights_path("captioner"))
    assert str(info.value) == f"{weights_path('captioner')} holds gradcam captioner weights; expected vqa weights"
    assert info.value.argument == "weights" and isinstance(info.value, GradCAMError)
    with pytest.raises(ModelLoadError) as info:
        load_vqa(tmp_path / "absent.pt")
    assert str(info.value) == f"weights file not found: {tmp_path / 'absent.pt'}"
    payload = torch.load(weights_path("captioner"), map_location="cpu", weights_only=True)
    payload["state_dict"] = {k: v[..., :1] for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(ModelLoadError, match=r"cut.pt does not build a captioner: RuntimeError: Error\(s\) in loading"):
        load_captioner(tmp_path / "cut.pt")


def test_unknown_model_spec_and_negative_scene() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_language_model("caption", "resnet50")
    assert str(info.value) == (
        "unknown model 'resnet50': use 'synthetic' or 'hf:FOLDER' (a local Hugging Face checkpoint)"
    )
    with pytest.raises(CommandError, match=r"^--scene must be >= 0; got -1$") as info:
        scene_image(-1)
    assert isinstance(info.value, GradCAMError)
