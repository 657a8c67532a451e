"""Grad-CAM for image captioning and visual question answering (Selvaraju et al. 2017, sections 7-8).

Quick start with the shipped synthetic-scene models::

    from gradcam.language import load_captioner, load_vqa, explain_caption, explain_answer, scene_tensor
    captioner = load_captioner()
    x = scene_tensor(3)                                   # held-out synthetic scene 3, (1, 3, 64, 64)
    e = explain_caption(captioner, x)                     # greedy caption; beam=3 for beam search
    e.words, e.log_probs, e.gradcam, e.guided_gradcam     # one map per word
    a = explain_answer(load_vqa(), x, "what colour is the circle?", counterfactual=False)
    a.answer, a.top, a.gradcam

The engine does the work: the word target ``log P(w_t | image, w_<t)`` (:class:`WordTarget`) and the
answer score (:class:`AnswerTarget`, or a plain class index) are callables on the model output, and the
text inputs travel through ``forward_kwargs``. Hugging Face models (BLIP captioning, ViLT VQA) go through
the adapters in :mod:`gradcam.language.hf` (the ``hf`` extra).
"""

from __future__ import annotations

import torch

from .explain import (
    AnswerExplanation,
    CaptionExplanation,
    answer_index,
    caption_tokens,
    explain_answer,
    explain_caption,
)
from .models import (
    PREPROCESS,
    SceneCaptioner,
    SceneVQA,
    load_captioner,
    load_vqa,
    normalize_images,
)
from .scenes import HELDOUT_SEED, Scene, SceneDataset, SceneObject, make_scene, render_scene
from .targets import AnswerTarget, CaptionTarget, WordTarget


def scene_tensor(index: int, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """Synthetic scene ``index`` (held-out split by default) as a normalised (1, 3, 64, 64) model input."""
    return normalize_images(render_scene(make_scene(seed, index))[None])


def __getattr__(name: str):
    if name in ("HFCaptioner", "HFQuestionAnswerer", "load_hf"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'gradcam.language' has no attribute {name!r}")


__all__ = [
    "PREPROCESS",
    "AnswerExplanation",
    "AnswerTarget",
    "CaptionExplanation",
    "CaptionTarget",
    "HFCaptioner",
    "HFQuestionAnswerer",
    "Scene",
    "SceneCaptioner",
    "SceneDataset",
    "SceneObject",
    "SceneVQA",
    "WordTarget",
    "answer_index",
    "caption_tokens",
    "explain_answer",
    "explain_caption",
    "load_captioner",
    "load_hf",
    "load_vqa",
    "make_scene",
    "render_scene",
    "scene_tensor",
]
