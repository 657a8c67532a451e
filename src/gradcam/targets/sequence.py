"""Sequence targets for captioning and VQA: token and sequence log-probabilities.

``TokenLogProbability``: ``log p(token | image, previous tokens)`` at one position;
``SequenceLogProbability``: ``sum_t log p(w_t | image, w_<t)`` (a caption, an answer), the scalars of the
Grad-CAM paper's captioning and VQA experiments (Selvaraju et al., ICCV 2017, sec. 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..errors import TargetError
from .classification import ClassScore, Kind
from .composition import PerImage, TaskTarget, check_range, finish, per_image
from .resolution import OutputSelector, select_output


def _sequence_logits(output: Any, select: OutputSelector) -> torch.Tensor:
    logits = select_output(output, select)
    if logits.dim() != 3:
        raise TargetError(f"sequence targets need (B, T, vocab) logits; got shape {tuple(logits.shape)}")
    return logits


class TokenLogProbability(TaskTarget):
    """``y = log p(token | image, previous tokens) = log_softmax(logits[b, position])[token]``.

    ``position`` indexes the logits' T axis (an int or B ints). For a causal decoder fed
    ``input_ids``, the logits at position t-1 predict token t. ``token``: an int, B ints or a (B, k)
    tensor (k candidate words, one map each).
    """

    _per_image: ClassVar[dict[str, int]] = {"token": 1, "position": 1}

    def __init__(self, token: PerImage, position: int | Sequence[int] | torch.Tensor, select: OutputSelector = None):
        self.token = token
        self.position = position
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = _sequence_logits(output, self.select)
        batch, length, vocab = logits.shape
        tokens, multi = per_image(self.token, batch, logits.device, "token")
        positions, position_multi = per_image(self.position, batch, logits.device, "position")
        if position_multi or positions.shape[1] != 1:
            raise TargetError("position must be an int or B ints")
        check_range(tokens, vocab, "token", "vocabulary entries")
        check_range(positions, length, "position", "positions")
        rows = logits[torch.arange(batch, device=logits.device), positions[:, 0]]  # (B, V)
        return finish(rows.log_softmax(-1).gather(1, tokens), multi)


class SequenceLogProbability(TaskTarget):
    """``y = sum_t m_t log p(w_t | image, w_<t)``: the log-probability of a token sequence.

    ``tokens``: (T,) or (B, T) ids. ``shift=True`` (causal decoders fed the same ids, teacher
    forcing): token t is scored by the logits at t-1, for t >= max(start, 1). ``shift=False``
    (encoder-decoders given ``labels``-aligned logits): token t is scored by the logits at t, for
    t >= start. ``start`` skips a prompt (a question: the answer's score given the question is the
    sum over the answer's tokens). ``mask`` (T,) or (B, T) zeroes padding. ``per_token=True`` gives
    one scalar, hence one map, per scored token: (B, n).
    """

    _per_image: ClassVar[dict[str, int]] = {"tokens": 2, "mask": 2}

    def __init__(
        self,
        tokens: torch.Tensor | Sequence[int],
        *,
        start: int = 0,
        mask: torch.Tensor | None = None,
        shift: bool = True,
        per_token: bool = False,
        select: OutputSelector = None,
    ) -> None:
        self.tokens = torch.as_tensor(tokens)
        if self.tokens.dim() not in (1, 2) or self.tokens.is_floating_point():
            raise TargetError(f"tokens must be (T,) or (B, T) integer ids; got shape {tuple(self.tokens.shape)}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise TargetError(f"start must be an integer >= 0; got {start!r}")
        self.start = start
        self.mask = mask
        self.shift = shift
        self.per_token = per_token
        self.select = select

    def __call__(self, output: Any) -> torch.Tensor:
        logits = _sequence_logits(output, self.select)
        batch, length, vocab = logits.shape
        tokens = self.tokens.to(logits.device, torch.long)
        tokens = tokens.expand(batch, -1) if tokens.dim() == 1 else tokens
        if tokens.shape[0] != batch:
            raise TargetError(f"tokens has {tokens.shape[0]} rows for {batch} images")
        check_range(tokens, vocab, "token", "vocabulary entries")
        offset = 1 if self.shift else 0
        first = max(self.start, offset)
        count = tokens.shape[1]
        if count - first < 1 or count - offset > length:
            raise TargetError(
                f"{count} tokens (start={self.start}, shift={self.shift}) do not fit logits of length {length}"
            )
        chosen = tokens[:, first:]
        log_probs = logits[:, first - offset : count - offset].log_softmax(-1).gather(2, chosen[..., None])[..., 0]
        if self.mask is not None:
            mask = torch.as_tensor(self.mask, device=logits.device).to(log_probs.dtype)
            mask = mask.expand(batch, -1) if mask.dim() == 1 else mask
            if mask.shape != tokens.shape:
                raise TargetError(f"mask must have the shape of tokens {tuple(tokens.shape)}; got {tuple(mask.shape)}")
            log_probs = log_probs * mask[:, first:]
        return log_probs if self.per_token else log_probs.sum(1)


def answer_score(
    answer: PerImage | torch.Tensor,
    *,
    question_length: int | None = None,
    kind: Kind = "logit",
    select: OutputSelector = None,
) -> TaskTarget:
    """An answer's score given a question (VQA), for the two kinds of VQA model.

    Classifier heads over an answer vocabulary (``answer`` = answer index): :class:`ClassScore`
    (ViLT-style heads are multi-label: ``kind="sigmoid"``). Generative models (``answer`` = the
    token ids of question + answer fed as ``input_ids``, ``question_length`` = number of question
    tokens): :class:`SequenceLogProbability` over the answer tokens.
    """
    if question_length is None:
        return ClassScore(answer, kind=kind, select=select)
    return SequenceLogProbability(answer, start=question_length, select=select)
