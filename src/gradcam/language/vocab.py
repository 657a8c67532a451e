"""Word-level vocabularies of the synthetic scene models: words <-> token ids, with clear errors."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from ..errors import InputError
from .scenes import COLOURS, RELATIONS, SHAPES, SIZES

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SYNONYMS = {"color": "colour", "an": "a"}
_WORD = re.compile(r"[a-z]+")


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text`` (punctuation dropped, American spellings mapped: color -> colour)."""
    return [SYNONYMS.get(word, word) for word in _WORD.findall(text.lower())]


class Vocabulary:
    """An ordered list of words; id ``i`` is ``words[i]``. ``<pad>`` is always id 0."""

    def __init__(self, words: Iterable[str], name: str = "vocabulary") -> None:
        self.words: tuple[str, ...] = tuple(dict.fromkeys(words))
        if not self.words or self.words[0] != PAD:
            raise ValueError("a vocabulary starts with '<pad>'")
        self.name = name
        self.index = {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def id(self, word: str) -> int:
        return self.index[word]

    def encode(
        self, text: str | Sequence[str], *, bos: bool = False, eos: bool = False, what: str = "text"
    ) -> list[int]:
        """Token ids of ``text`` (a string or a list of words); unknown words raise InputError listing them."""
        words = split_words(text) if isinstance(text, str) else [SYNONYMS.get(w.lower(), w.lower()) for w in text]
        if not words:
            raise InputError(f"{what} is empty; expected words such as {' '.join(self.plain_words()[:6])}")
        unknown = [w for w in words if w not in self.index or w in (PAD, BOS, EOS)]
        if unknown:
            raise InputError(
                f"{what} has words the {self.name} does not know: {', '.join(repr(w) for w in unknown)}; "
                f"known words: {' '.join(self.plain_words())}"
            )
        ids = [self.index[w] for w in words]
        return ([self.index[BOS]] if bos else []) + ids + ([self.index[EOS]] if eos else [])

    def decode(self, ids: Iterable[int] | torch.Tensor, *, strip: bool = True) -> list[str]:
        """Words of ``ids``; with ``strip`` the specials are dropped and decoding stops at ``<eos>``."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        words = []
        for i in values:
            word = self.words[int(i)]
            if strip and word == EOS:
                break
            if strip and word in (PAD, BOS):
                continue
            words.append(word)
        return words

    def plain_words(self) -> list[str]:
        """The vocabulary without its special tokens."""
        return [w for w in self.words if w not in (PAD, BOS, EOS)]

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} {self.name} words)"


_RELATION_WORDS = [w for relation in RELATIONS for w in relation.split()]
CAPTION_VOCAB = Vocabulary([PAD, BOS, EOS, "a", *SIZES, *COLOURS, *SHAPES, *_RELATION_WORDS], name="caption vocabulary")
QUESTION_VOCAB = Vocabulary(
    [PAD, "what", "colour", "shape", "size", "is", "the", "object", *COLOURS, *SHAPES, *_RELATION_WORDS],
    name="question vocabulary",
)
ANSWER_KINDS: tuple[tuple[str, ...], ...] = (tuple(COLOURS), SHAPES, tuple(SIZES))  # colours, shapes, sizes
ANSWERS: tuple[str, ...] = tuple(a for kind in ANSWER_KINDS for a in kind)


def pad_batch(sequences: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """A (B, L) long tensor of the sequences right-padded with 0 (``<pad>``)."""
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    size = max(len(s) for s in sequences) if length is None else length
    out = torch.zeros(len(sequences), size, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.as_tensor(list(seq)[:size], dtype=torch.long)
    return out
