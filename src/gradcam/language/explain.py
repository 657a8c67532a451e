"""Grad-CAM and Guided Grad-CAM per caption word and per VQA answer, on the shared engine.

Any model that follows the small protocols below works: the shipped synthetic models, and Hugging Face
models through :mod:`gradcam.language.hf`. The engine's ``forward_kwargs`` carries the text inputs
(token ids by teacher forcing, the question) and a :mod:`~gradcam.language.targets` callable turns the
output into the scalars to explain, so nothing here differentiates by itself.

- captioner: an ``nn.Module`` called as ``model(images, **model.teacher_kwargs(tokens))`` returning
  ``(B, L, vocab)`` logits (or an output with ``logits``), with attributes ``layer``, ``reshape``,
  ``bos_id``, ``eos_id`` and methods ``generate(images, max_len, beam) -> (B, L)``,
  ``token_words(tokens) -> list[str]`` and ``encode_caption(text) -> (1, L)``.
- question answerer: an ``nn.Module`` called as ``model(images, **model.question_kwargs(question, B))``
  returning ``(B, answers)`` logits, with ``layer``, ``reshape`` and ``answers`` (names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..methods.base import normalize, upsample
from ..methods.gradcam import GradCAM
from ..methods.guided import GuidedGradCAM
from .targets import WordTarget


@dataclass(frozen=True)
class CaptionExplanation:
    """Maps for each explained word of one caption (T words, input size H x W, C channels).

    ``tokens`` is the full id sequence (start token first); word ``i`` is ``tokens[positions[i]]``.
    ``log_probs`` (T,) holds ``log P(w_t | image, w_<t)``; ``gradcam`` (T, H, W) in [0, 1];
    ``guided_gradcam`` (T, C, H, W) (None when not asked for); ``raw`` (T, u, v) the layer-resolution maps.
    """

    caption: str
    tokens: torch.Tensor
    positions: tuple[int, ...]
    words: tuple[str, ...]
    log_probs: torch.Tensor
    gradcam: torch.Tensor
    guided_gradcam: torch.Tensor | None
    raw: torch.Tensor
    layer: str
    counterfactual: bool = False


@dataclass(frozen=True)
class AnswerExplanation:
    """The map of one answer to one question about one image.

    ``top`` lists the best answers as (name, probability); ``score`` is the explained answer's logit;
    ``gradcam`` (H, W) in [0, 1]; ``guided_gradcam`` (C, H, W) or None; ``raw`` (u, v).
    """

    question: str
    answer: str
    answer_index: int
    predicted: str
    score: float
    probability: float
    top: tuple[tuple[str, float], ...]
    gradcam: torch.Tensor
    guided_gradcam: torch.Tensor | None
    raw: torch.Tensor
    layer: str
    counterfactual: bool = False


def _single_image(image: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise InputError(f"image must be a (C, H, W) or (1, C, H, W) tensor; got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise InputError(f"image must be one image, (C, H, W) or (1, C, H, W); got shape {tuple(image.shape)}")
    parameter = next(model.parameters(), None)
    return image.to(parameter.device) if parameter is not None else image


def _explainer(model: nn.Module, guided: bool, layer: Any, reshape: Any) -> GradCAM | GuidedGradCAM:
    layer = getattr(model, "layer", None) if layer is None else layer
    reshape = getattr(model, "reshape", None) if reshape is None else reshape
    cls = GuidedGradCAM if guided else GradCAM
    return cls(model, layer, reshape=reshape)


def _cam_heatmap(explanation: Any, size: tuple[int, int], guided: bool) -> torch.Tensor:
    """The Grad-CAM heatmap of a Grad-CAM or Guided Grad-CAM explanation (Guided Grad-CAM keeps ``raw``)."""
    if not guided:
        return explanation.heatmap
    raw = explanation.raw
    return normalize(upsample(raw if raw.dim() == 4 else raw[:, None], size)).reshape(*raw.shape[:-2], *size)


def caption_tokens(
    model: nn.Module,
    image: torch.Tensor,
    caption: str | Sequence[int] | torch.Tensor | None = None,
    *,
    beam: int = 1,
    max_len: int = 18,
) -> torch.Tensor:
    """The (L,) token ids of ``caption``: generated (greedy or beam) when None, encoded from text, or as given."""
    if caption is None:
        tokens = model.generate(image, max_len=max_len, beam=beam)[0]
    elif isinstance(caption, str):
        tokens = model.encode_caption(caption)[0]
    else:
        tokens = torch.as_tensor(caption, dtype=torch.long).reshape(-1)
        if tokens.numel() < 2 or int(tokens[0]) != model.bos_id:
            raise InputError(f"caption ids must start with the start token {model.bos_id} and hold a word")
    tokens = tokens.to(image.device)
    ends = (tokens[1:] == model.eos_id).nonzero()  # from position 1: some models start with their end token
    return tokens[: int(ends[0, 0]) + 2] if len(ends) else tokens


def explain_caption(
    model: nn.Module,
    image: torch.Tensor,
    caption: str | Sequence[int] | torch.Tensor | None = None,
    *,
    beam: int = 1,
    max_len: int = 18,
    guided: bool = True,
    include_end: bool = False,
    counterfactual: bool = False,
    layer: Any = None,
    reshape: Any = None,
) -> CaptionExplanation:
    """Grad-CAM (and Guided Grad-CAM) of ``log P(w_t | image, w_<t)`` for every word of a caption.

    ``caption`` None generates one (greedy, or beam search with ``beam > 1``) and explains it; a string
    or a sequence of ids (start token first) explains that caption. All words are explained from ONE
    teacher-forced forward pass (one backward per word). ``include_end`` adds the end token's map.
    """
    image = _single_image(image, model)
    tokens = caption_tokens(model, image, caption, beam=beam, max_len=max_len)
    last = tokens.shape[0] - (0 if include_end or int(tokens[-1]) != model.eos_id else 1)
    positions = list(range(1, last))
    if not positions:
        raise InputError("the caption has no words to explain")
    explainer = _explainer(model, guided, layer, reshape)
    e = explainer(
        image,
        WordTarget(tokens[None], positions),
        counterfactual=counterfactual,
        forward_kwargs=model.teacher_kwargs(tokens[None]),
    )
    words = model.token_words(tokens)
    size = tuple(image.shape[-2:])
    return CaptionExplanation(
        caption=" ".join(words[p] for p in positions if p < len(words) and int(tokens[p]) != model.eos_id),
        tokens=tokens,
        positions=tuple(positions),
        words=tuple(words[p] for p in positions),
        log_probs=e.scores[0],
        gradcam=_cam_heatmap(e, size, guided)[0],
        guided_gradcam=e.heatmap[0] if guided else None,
        raw=e.raw[0],
        layer=e.layer,
        counterfactual=counterfactual,
    )


def answer_index(model: nn.Module, answer: str | int) -> int:
    """The index of ``answer`` (a name in ``model.answers`` or an index), InputError listing the names."""
    answers = list(model.answers)
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(answers):
            raise InputError(f"answer index {answer} is out of range for {len(answers)} answers")
        return answer
    name = str(answer).strip().lower()
    lowered = [a.lower() for a in answers]
    if name == "color":
        name = "colour"
    if name not in lowered:
        raise InputError(f"answer {answer!r} is not one the model can give; answers: {', '.join(answers)}")
    return lowered.index(name)


def explain_answer(
    model: nn.Module,
    image: torch.Tensor,
    question: str | Sequence[int] | torch.Tensor,
    *,
    answer: str | int | None = None,
    counterfactual: bool = False,
    guided: bool = True,
    top: int = 5,
    layer: Any = None,
    reshape: Any = None,
) -> AnswerExplanation:
    """Grad-CAM (and Guided Grad-CAM) of an answer's score given ``question`` (text or word ids).

    ``answer`` None explains the model's own answer; ``counterfactual`` explains ``-score``: the regions
    whose presence argues against the answer (the paper's counterfactual maps, eq. 7).
    """
    image = _single_image(image, model)
    kwargs = model.question_kwargs(question, 1)
    kwargs = {k: v.to(image.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    index = None if answer is None else answer_index(model, answer)
    explainer = _explainer(model, guided, layer, reshape)
    # a class-index target: the engine reads the answer logits (and returns them) from the same pass
    e = explainer(image, index, counterfactual=counterfactual, forward_kwargs=kwargs)
    logits = e.logits[0].float()
    probabilities = logits.softmax(-1)
    predicted = int(logits.argmax())
    index = predicted if index is None else index
    names = list(model.answers)
    best = probabilities.topk(min(top, len(names)))
    text = question if isinstance(question, str) else " ".join(map(str, torch.as_tensor(question).reshape(-1).tolist()))
    return AnswerExplanation(
        question=text,
        answer=names[index],
        answer_index=index,
        predicted=names[predicted],
        score=float(e.scores[0]),
        probability=float(probabilities[index]),
        top=tuple((names[int(i)], float(p)) for p, i in zip(best.values, best.indices)),
        gradcam=_cam_heatmap(e, tuple(image.shape[-2:]), guided)[0],
        guided_gradcam=e.heatmap[0] if guided else None,
        raw=e.raw[0],
        layer=e.layer,
        counterfactual=counterfactual,
    )
