"""Targets for vision-language models: callables ``output -> (B,)`` / ``(B, k)`` scalars for the engine.

- :class:`WordTarget`: ``y_t = log P(w_t | image, w_<t)`` of the caption words at given positions,
  read from teacher-forced (or free-running) decoder logits: ``log_softmax(logits[:, t - 1])[w_t]``.
- :class:`CaptionTarget`: ``log P(caption | image) = sum_t log P(w_t | image, w_<t)``, the whole-caption
  target of the Grad-CAM paper's captioning experiments (Selvaraju et al. 2017, sec. 7.1).
- :class:`AnswerTarget`: the score of an answer given the question (the answer logit, as the paper's
  VQA maps, or its log-probability).

Token convention (ours and Hugging Face decoders'): ``tokens[:, 0]`` is the start token and
``logits[:, t]`` scores the token at position ``t + 1``; a word position ``t`` is >= 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TargetError
from ..targets import select_output


def _positions(positions: int | Sequence[int] | torch.Tensor) -> tuple[list[int], bool]:
    """Positions as a list of ints >= 1, and whether a single int was given."""
    if isinstance(positions, bool):
        raise TargetError("positions must be an int or a sequence of ints >= 1")
    single = isinstance(positions, int) or (isinstance(positions, torch.Tensor) and positions.dim() == 0)
    values = [int(positions)] if single else [int(p) for p in torch.as_tensor(positions).reshape(-1).tolist()]
    if not values:
        raise TargetError("positions is empty: give at least one word position (>= 1)")
    if min(values) < 1:
        raise TargetError(
            f"word positions must be >= 1 (position 0 is the start token, which is not predicted); got {values}"
        )
    return values, single


class WordTarget:
    """``y = log P(w_t | image, w_<t)`` for each position ``t`` in ``positions`` (Grad-CAM per word).

    ``tokens``: (B, L) or (L,) ids, start token first, the sequence that was fed by teacher forcing;
    None reads ``output["tokens"]`` (the sequence a free-running decoder generated). ``positions``: one
    int (scores (B,)) or several (scores (B, k), one map per word from one forward pass). With
    ``log_prob=False`` the target is the word's logit instead.
    """

    def __init__(
        self,
        tokens: torch.Tensor | Sequence[int] | None,
        positions: int | Sequence[int] | torch.Tensor,
        *,
        log_prob: bool = True,
    ) -> None:
        if tokens is not None:
            tokens = torch.as_tensor(tokens)
            if tokens.is_floating_point() or tokens.dim() not in (1, 2):
                raise TargetError(
                    f"tokens must be (L,) or (B, L) integer ids; got {tuple(tokens.shape)} {tokens.dtype}"
                )
            tokens = tokens.long()[None] if tokens.dim() == 1 else tokens.long()
        self.tokens = tokens
        self.positions, self.single = _positions(positions)
        self.log_prob = log_prob

    def _sequence(self, output: Any, batch: int, device: torch.device) -> torch.Tensor:
        tokens = self.tokens
        if tokens is None:
            if not (isinstance(output, Mapping) and "tokens" in output):
                raise TargetError("WordTarget(tokens=None) needs a model output with 'tokens'; pass the token ids")
            tokens = output["tokens"]
        if tokens.shape[0] not in (1, batch):
            raise TargetError(f"tokens has {tokens.shape[0]} rows for a batch of {batch} images")
        return tokens.to(device).expand(batch, -1)

    def __call__(self, output: Any) -> torch.Tensor:
        logits = select_output(output, what="captioning model output")
        if logits.dim() != 3:
            raise TargetError(f"word targets need (B, L, vocab) logits; got shape {tuple(logits.shape)}")
        tokens = self._sequence(output, logits.shape[0], logits.device)
        last = max(self.positions)
        if last >= tokens.shape[1] or last > logits.shape[1]:
            raise TargetError(
                f"word position {last} is past the caption: {tokens.shape[1]} tokens (positions 1.."
                f"{tokens.shape[1] - 1}) and {logits.shape[1]} logit steps"
            )
        index = torch.tensor(self.positions, device=logits.device)
        steps = logits[:, index - 1].float()  # (B, k, V): the distribution each word was drawn from
        scores = F.log_softmax(steps, dim=-1) if self.log_prob else steps
        words = tokens[:, index]  # (B, k)
        picked = scores.gather(2, words[..., None]).squeeze(2)
        return picked[:, 0] if self.single else picked

    def __repr__(self) -> str:
        return f"WordTarget(positions={self.positions}, log_prob={self.log_prob})"


class CaptionTarget(WordTarget):
    """``y = log P(caption | image) = sum_t log P(w_t | image, w_<t)`` over ``positions`` (default: all
    positions 1..L-1 of ``tokens``, the end token included)."""

    def __init__(self, tokens: torch.Tensor | Sequence[int], positions: Sequence[int] | None = None) -> None:
        tokens = torch.as_tensor(tokens)
        length = tokens.shape[-1]
        if length < 2:
            raise TargetError("a caption needs a start token and at least one word")
        super().__init__(tokens, list(range(1, length)) if positions is None else list(positions))

    def __call__(self, output: Any) -> torch.Tensor:
        scores = super().__call__(output)
        return scores.reshape(scores.shape[0], -1).sum(1)


class AnswerTarget:
    """The score of answer ``answer`` (an index, or B indices) given the question: its logit (the paper's
    choice for VQA), or with ``log_prob=True`` its log-probability ``log_softmax(logits)[answer]``."""

    def __init__(self, answer: int | Sequence[int] | torch.Tensor, *, log_prob: bool = False) -> None:
        index = torch.as_tensor(answer)
        if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1:
            raise TargetError(f"answer must be an index or B indices; got {answer!r}")
        self.answer = index.long().reshape(-1)
        self.log_prob = log_prob

    def __call__(self, output: Any) -> torch.Tensor:
        logits = select_output(output, what="VQA model output")
        if logits.dim() != 2:
            raise TargetError(f"answer targets need (B, answers) logits; got shape {tuple(logits.shape)}")
        answer = self.answer.to(logits.device).expand(logits.shape[0]) if self.answer.numel() == 1 else self.answer
        if answer.shape[0] != logits.shape[0]:
            raise TargetError(f"got {answer.shape[0]} answers for a batch of {logits.shape[0]}")
        if bool(((answer < 0) | (answer >= logits.shape[1])).any()):
            raise TargetError(f"answer index out of range for {logits.shape[1]} answers: {answer.tolist()}")
        scores = F.log_softmax(logits.float(), dim=-1) if self.log_prob else logits
        return scores.gather(1, answer.to(logits.device)[:, None]).squeeze(1)

    def __repr__(self) -> str:
        return f"AnswerTarget({self.answer.tolist()}, log_prob={self.log_prob})"
