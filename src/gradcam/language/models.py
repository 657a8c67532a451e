"""Two small vision-language models trained on the synthetic scenes, and their shipped weights.

- :class:`SceneCaptioner`: Show-and-Tell / neuraltalk2 style (Vinyals et al. 2015; Karpathy & Fei-Fei
  2015): a CNN encodes the image, its last conv feature map ``A`` (B, 32, 8, 8) is flattened into one
  image vector ``v`` that sets the GRU's initial state and is fed with every word; the GRU predicts the
  next word. Grad-CAM explains ``A`` (layer ``"encoder"``).
- :class:`SceneVQA`: the same kind of CNN, a GRU question encoder, two attention hops over the 8 x 8
  grid (Yang et al. 2016) and, in the shipped form (``fusion="readout"``), the answer read linearly
  from the CNN channels of the attended cells; ``fusion="attention"`` (an MLP on the attention state)
  and ``fusion="product"`` (Lu et al. 2015) are the alternatives measured in docs/language.md.
  Grad-CAM explains the CNN's output ``A`` (layer ``"encoder"``).

Both take 64 x 64 images normalised with :data:`PREPROCESS` (``(pixel - background) / 0.25``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture import model_guard
from ..errors import InputError
from ..imaging.geometry import PreprocessConfig
from ..models.loaded import ModelLoadError
from ..models.weights import TORCH_LOAD_ERRORS, short_reason
from .scenes import BACKGROUND
from .vocab import ANSWER_KINDS, ANSWERS, BOS, CAPTION_VOCAB, EOS, PAD, QUESTION_VOCAB, Vocabulary, pad_batch

logger = logging.getLogger("gradcam")

# mean = the scenes' background grey: an empty background is a zero input, and the bias-free CNN
# maps it to zero features (objects, not background, carry activation, as in a detector)
PREPROCESS = PreprocessConfig(input_size=64, resize_size=64, mean=BACKGROUND, std=(0.25, 0.25, 0.25))
FORMAT = "gradcam-language/1"
DEFAULT_LAYER = "encoder"
MAX_CAPTION_WORDS = 18


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> model input: ``(x - mean) / std`` per channel, as :data:`PREPROCESS`."""
    mean = torch.tensor(PREPROCESS.mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(PREPROCESS.std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


def scene_encoder(channels: int = 32) -> nn.Sequential:
    """64 x 64 x 3 -> (channels, 8, 8): four bias-free 3x3 conv + ReLU blocks, max-pooling after the first
    three (bias-free: a zero input, the empty background, gives zero features)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, channels, 3, padding=1, bias=False), nn.ReLU(),
    )  # fmt: skip


class SceneCaptioner(nn.Module):
    """CNN encoder + GRU decoder. ``forward(images, tokens)`` returns ``{"logits", "tokens"}``.

    ``decoder="attention"`` (default, the shipped weights; Show, Attend and Tell, Xu et al. 2015): the
    8 x 8 cells of ``A`` (with their coordinates) are projected to vectors ``V_ij``; at each step the
    GRU state ``h`` attends over them, ``p = softmax(w^T tanh(W_v V + W_h h))``, ``c = sum p V``, the GRU
    reads ``[embed(w_{t-1}); c]`` and the next word is scored from ``[h; c]``.
    ``decoder="show-tell"`` (Vinyals et al. 2015 / neuraltalk2): ``A`` is flattened into ONE image
    vector ``v = tanh(W flatten(A))`` that starts the GRU and replaces ``c`` at every step.

    With ``tokens`` (B, L) starting with ``<bos>`` (teacher forcing) ``logits`` is (B, L, V) and
    ``logits[:, t]`` scores the word at position ``t + 1``. With ``tokens=None`` the model runs free:
    it feeds back its own argmax word (greedy decoding) for up to ``max_len`` steps, and ``tokens`` is
    the generated sequence (B, 1 + steps), ``<bos>`` first, aligned the same way with ``logits``. Both
    paths run the same :meth:`step`, so the same words give the same numbers.
    """

    layer = DEFAULT_LAYER
    reshape = None

    def __init__(
        self,
        vocab: Vocabulary = CAPTION_VOCAB,
        hidden: int = 192,
        embed: int = 48,
        channels: int = 32,
        decoder: str = "attention",
    ):
        super().__init__()
        if decoder not in ("attention", "show-tell"):
            raise ValueError(f"decoder must be 'attention' or 'show-tell'; got {decoder!r}")
        self.vocab = vocab
        self.config = {"hidden": hidden, "embed": embed, "channels": channels, "decoder": decoder}
        self.attention = decoder == "attention"
        self.encoder = scene_encoder(channels)
        if self.attention:
            self.cells = nn.Linear(channels + 2, hidden)
            self.att_v = nn.Linear(hidden, hidden)
            self.att_h = nn.Linear(hidden, hidden, bias=False)
            self.att_w = nn.Linear(hidden, 1)
            self.init = nn.Linear(hidden, hidden)
            ramp = torch.linspace(-1, 1, 8)
            coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).flatten(1).T  # (64, 2): (x, y)
            self.register_buffer("coords", coords, persistent=False)
        else:
            self.image_vector = nn.Linear(channels * 8 * 8, hidden)
        self.embed = nn.Embedding(len(vocab), embed)
        self.gru = nn.GRUCell(embed + hidden, hidden)
        self.out = nn.Linear(2 * hidden, len(vocab))
        self.bos_id, self.eos_id, self.pad_id = vocab.id(BOS), vocab.id(EOS), vocab.id(PAD)

    def memory(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What the decoder reads: (cells V (B, n, hidden), attention keys ``W_v V`` or None, initial state)."""
        features = self.encoder(images)
        if not self.attention:
            v = torch.tanh(self.image_vector(features.flatten(1)))
            return v[:, None], None, v
        grid = torch.cat([features.flatten(2).transpose(1, 2), self.coords.expand(features.shape[0], -1, -1)], -1)
        cells = torch.tanh(self.cells(grid))
        return cells, self.att_v(cells), torch.tanh(self.init(cells.mean(1)))

    def step(
        self, token: torch.Tensor, h: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step: previous words (B,), state (B, hidden) -> (next-word logits (B, V), new state)."""
        cells, keys, _ = memory
        if keys is None:
            context = cells[:, 0]
        else:
            p = torch.softmax(self.att_w(torch.tanh(keys + self.att_h(h)[:, None])).squeeze(-1), dim=1)
            context = (p[..., None] * cells).sum(1)
        h = self.gru(torch.cat([self.embed(token), context], dim=-1), h)
        return self.out(torch.cat([h, context], dim=-1)), h

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor | None = None, max_len: int = MAX_CAPTION_WORDS
    ) -> dict[str, torch.Tensor]:
        memory = self.memory(images)
        h = memory[2]
        if tokens is not None:
            if tokens.dim() != 2 or tokens.shape[0] != images.shape[0]:
                raise InputError(f"tokens must be (B, L) with B={images.shape[0]}; got shape {tuple(tokens.shape)}")
            steps = []
            for t in range(tokens.shape[1]):
                logits, h = self.step(tokens[:, t], h, memory)
                steps.append(logits)
            return {"logits": torch.stack(steps, dim=1), "tokens": tokens}
        token = torch.full((images.shape[0],), self.bos_id, dtype=torch.long, device=images.device)
        generated, steps = [token], []
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for t in range(max_len + 1):
            logits, h = self.step(token, h, memory)
            steps.append(logits)
            # after max_len words the caption ends: the last step's token is <eos>, not a word max_len + 1
            best = logits.detach().argmax(-1) if t < max_len else torch.full_like(token, self.eos_id)
            token = torch.where(done, torch.full_like(token, self.pad_id), best)
            generated.append(token)
            done = done | (token == self.eos_id)
            if bool(done.all()):
                break
        return {"logits": torch.stack(steps, dim=1), "tokens": torch.stack(generated, dim=1)}

    # --- the captioner protocol used by gradcam.language.explain ------------------------------------
    def teacher_kwargs(self, tokens: torch.Tensor) -> dict[str, Any]:
        """``forward`` keyword arguments that feed ``tokens`` (B, L) by teacher forcing."""
        return {"tokens": tokens}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int = MAX_CAPTION_WORDS, beam: int = 1) -> torch.Tensor:
        """Captions as token ids (B, L): ``<bos>``, at most ``max_len`` words, ``<eos>``, right-padded; greedy or beam.

        Beam search keeps the ``beam`` best partial captions by summed log-probability and returns the
        finished caption with the highest sum (neuraltalk2's rule, no length normalisation).
        """
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise InputError(f"beam must be an integer >= 1; got {beam!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise InputError(f"max_len must be an integer >= 1 (words); got {max_len!r}")
        with model_guard(self):
            if beam == 1:
                return _cut_after_eos(self(images, max_len=max_len)["tokens"], self.eos_id, self.pad_id)
            captions = [self._beam_search(images[b : b + 1], max_len, beam) for b in range(images.shape[0])]
        return pad_batch(captions).to(images.device)

    def _beam_search(self, image: torch.Tensor, max_len: int, beam: int) -> list[int]:
        cells, keys, h = self.memory(image)
        seqs, scores = [[self.bos_id]], torch.zeros(1, device=image.device)
        finished: list[tuple[float, list[int]]] = []
        for t in range(max_len + 1):
            n = len(seqs)
            memory = (cells.expand(n, -1, -1), None if keys is None else keys.expand(n, -1, -1), h)
            token = torch.tensor([s[-1] for s in seqs], device=image.device)
            logits, h = self.step(token, h, memory)
            log_probs = torch.log_softmax(logits, dim=-1)
            if t == max_len:  # max_len words so far: every beam ends here, with its <eos> scored
                only_end = torch.full_like(log_probs, float("-inf"))
                only_end[:, self.eos_id] = log_probs[:, self.eos_id]
                log_probs = only_end
            total = (scores[:, None] + log_probs).reshape(-1)
            best = total.topk(min(beam, total.numel()))
            vocab = logits.shape[-1]
            keep_rows, keep_seqs, keep_scores = [], [], []
            for score, flat in zip(best.values.tolist(), best.indices.tolist()):
                row, word = divmod(flat, vocab)
                if word == self.eos_id:
                    finished.append((score, [*seqs[row], word]))
                else:
                    keep_rows.append(row)
                    keep_seqs.append([*seqs[row], word])
                    keep_scores.append(score)
            # log-probabilities are <= 0: a partial caption only loses score, so stop once a finished
            # caption beats every partial one
            if not keep_seqs or (finished and max(f[0] for f in finished) >= max(keep_scores)):
                break
            seqs, scores = keep_seqs, torch.tensor(keep_scores, device=image.device)
            h = h[torch.tensor(keep_rows, device=image.device)]
        if not finished:  # max_len reached: close the best partial captions
            finished = [(s, [*q, self.eos_id]) for s, q in zip(scores.tolist(), seqs)]
        return max(finished, key=lambda f: f[0])[1]

    def token_words(self, tokens: torch.Tensor) -> list[str]:
        """The word of every id in the 1-D ``tokens`` (specials included)."""
        return [self.vocab.words[int(i)] for i in tokens]

    def encode_caption(self, caption: str) -> torch.Tensor:
        """``"a red circle ..."`` -> (1, L) ids ``<bos> ... <eos>`` (InputError naming unknown words)."""
        return torch.tensor([self.vocab.encode(caption, bos=True, eos=True, what="caption")])


def _cut_after_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """Replace everything after each row's first ``<eos>`` with ``<pad>`` and drop all-pad columns."""
    is_eos = tokens == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0
    tokens = tokens.masked_fill(after, pad)
    keep = (tokens != pad).any(0)
    last = int(keep.nonzero().max()) + 1 if bool(keep.any()) else tokens.shape[1]
    return tokens[:, :last]


def answer_groups(answers: tuple[str, ...]) -> torch.Tensor:
    """(n, n) averaging matrix ``G`` of the answer kinds: ``G[a, b] = 1 / |kind(a)|`` when answers ``a`` and
    ``b`` are of the same kind (colours, shapes, sizes; any other answer is its own kind), else 0."""
    kinds = [next((i for i, group in enumerate(ANSWER_KINDS) if a in group), -1 - j) for j, a in enumerate(answers)]
    same = torch.tensor([[float(k == m) for m in kinds] for k in kinds])
    return same / same.sum(1, keepdim=True)


class SceneVQA(nn.Module):
    """CNN + GRU question encoder + a fusion of question and image + answer logits (B, len(ANSWERS)).

    ``forward(images, question)``, ``question`` (B, Lq) word ids right-padded with 0. The CNN output,
    times the constant ``feature_scale`` (set at training so that it is O(1)), is ``A`` (B, C, 8, 8);
    Grad-CAM explains the CNN output (layer ``"encoder"``). ``u0`` is the question's last GRU state.

    Attention hops (fusions "attention" and "readout"): hop ``i`` attends over the 64 cells with scaled
    dot products ``p = softmax(k_ij . (Q_i u) / sqrt(d))`` (``attention="additive"``:
    ``p = softmax(w_i^T tanh(k_ij + Q_i u))``), the keys being ``k_ij = K_i V_ij`` of the cells
    ``V = tanh(W [A; x; y])`` or, with ``keys="linear"``, ``k_ij = K_i [A_ij; x_ij; y_ij]``; then
    ``u <- u + sum p V`` or, with ``values="positions"``, ``u <- u + P_i sum p (x, y)``. ``fusion``:

    - ``"attention"``: stacked attention (Yang et al. 2016): an MLP reads the answer off ``u``.
    - ``"readout"`` (shipped): the answer is read from the CNN channels of the last hop's cells,
      ``c = sum_ij p_ij A_ij``: ``logits = (W - G W) c + b(u0)``, a linear readout centred within each
      answer kind (``G``: :func:`answer_groups`; the softmax over answers is blind to a component that
      a kind's answers share, so it is removed) plus a question-only prior ``b`` (an MLP). With linear
      keys and positional values, Grad-CAM's channel weights are exactly ``(W - G W)[a] / 64`` (times
      ``feature_scale``): the softmax's gradients sum to 0 over the cells and the keys have the same
      Jacobian in every cell, so the attention adds nothing to the spatial average.
    - ``"product"``: Lu et al. 2015's "deeper LSTM Q + norm I", the paper's VQA model: one image vector
      from the whole grid (VGG's fc7: flatten + fc, so positions are kept),
      ``logits = MLP(tanh(W_i flatten(A)) * tanh(W_q u0))``.
    """

    layer = DEFAULT_LAYER
    reshape = None
    FUSIONS = ("attention", "readout", "product")

    def __init__(
        self,
        vocab: Vocabulary = QUESTION_VOCAB,
        answers: tuple[str, ...] = ANSWERS,
        hidden: int = 128,
        embed: int = 48,
        channels: int = 32,
        hops: int = 2,
        attention: str = "dot",
        fusion: str = "attention",
        keys: str = "cells",
        values: str = "cells",
        feature_scale: float = 1.0,
    ):
        super().__init__()
        if attention not in ("dot", "additive"):
            raise ValueError(f"attention must be 'dot' or 'additive'; got {attention!r}")
        if fusion not in self.FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(self.FUSIONS)}; got {fusion!r}")
        if keys not in ("cells", "linear"):
            raise ValueError(f"keys must be 'cells' or 'linear'; got {keys!r}")
        if values not in ("cells", "positions"):
            raise ValueError(f"values must be 'cells' or 'positions'; got {values!r}")
        self.vocab, self.answers = vocab, tuple(answers)
        self.config = {
            "hidden": hidden, "embed": embed, "channels": channels, "hops": hops, "attention": attention,
            "fusion": fusion, "keys": keys, "values": values, "feature_scale": feature_scale,
        }  # fmt: skip
        self.fusion, self.additive, self.feature_scale = fusion, attention == "additive", float(feature_scale)
        self.linear_keys, self.positional = keys == "linear", values == "positions"
        self.uses_cells = fusion != "product" and not (self.linear_keys and self.positional)
        n = len(self.answers)
        self.encoder = scene_encoder(channels)
        self.embed = nn.Embedding(len(vocab), embed, padding_idx=0)
        self.question = nn.GRU(embed, hidden, batch_first=True)
        if fusion == "product":
            self.image_vector = nn.Linear(channels * 8 * 8, hidden)
            self.question_vector = nn.Linear(hidden, hidden)
        else:
            if self.uses_cells:
                self.cells = nn.Linear(channels + 2, hidden)
            if self.positional:
                self.where = nn.ModuleList(nn.Linear(2, hidden) for _ in range(hops))
            key_in = channels + 2 if self.linear_keys else hidden
            self.att_v = nn.ModuleList(nn.Linear(key_in, hidden) for _ in range(hops))
            self.att_q = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(hops))
            if self.additive:
                self.att_w = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(hops))
            ramp = torch.linspace(-1, 1, 8)
            coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).flatten(1).T  # (64, 2): (x, y)
            self.register_buffer("coords", coords, persistent=False)
        if fusion == "readout":
            self.readout = nn.Linear(channels, n, bias=False)
            self.register_buffer("groups", answer_groups(self.answers), persistent=False)
        self.classifier = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n))

    def encode_question(self, question: torch.Tensor) -> torch.Tensor:
        """The GRU state after each question's last word, (B, hidden)."""
        if question.dim() != 2:
            raise InputError(f"question must be (B, L) word ids; got shape {tuple(question.shape)}")
        unique, inverse = torch.unique(question, dim=0, return_inverse=True)  # templated: few distinct
        outputs, _ = self.question(self.embed(unique))
        last = (unique != 0).sum(1).clamp(min=1) - 1
        return outputs[torch.arange(unique.shape[0], device=question.device), last][inverse]

    def memory(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: the CNN channels of each cell ``A`` (B, 64, C) and, for the attention fusions, each
        hop's attention keys (B, hops, 64, hidden), ``K_i V`` or with ``keys="linear"`` ``K_i [A; x; y]``
        (linear in ``A``), and the cells ``V`` (B, 64, hidden) where keys or values use them."""
        features = self.encoder(images).flatten(2).transpose(1, 2) * self.feature_scale
        if self.fusion == "product":
            return {"features": features}
        grid = torch.cat([features, self.coords.expand(features.shape[0], -1, -1)], -1)
        out = {"features": features}
        if self.uses_cells:
            out["cells"] = torch.tanh(self.cells(grid))
        source = grid if self.linear_keys else out["cells"]
        out["keys"] = torch.stack([k(source) for k in self.att_v], 1)
        return out

    def attend(self, memory: Mapping[str, torch.Tensor], u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention hops: (final question state ``u``, last hop's attention ``p`` (N, 64))."""
        cells, keys = memory.get("cells"), memory["keys"]
        scale = keys.shape[-1] ** -0.5
        for hop, att_q in enumerate(self.att_q):
            if self.additive:
                energy = self.att_w[hop](torch.tanh(keys[:, hop] + att_q(u)[:, None])).squeeze(-1)
            else:
                energy = (keys[:, hop] @ att_q(u)[..., None]).squeeze(-1) * scale
            p = torch.softmax(energy, dim=1)
            # values="positions": the hop passes on only where it looked, u <- u + P_i sum p (x, y)
            u = u + (self.where[hop](p @ self.coords) if self.positional else (p[..., None] * cells).sum(1))
        return u, p

    def answer(
        self, memory: Mapping[str, torch.Tensor], question: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Answer logits for each question; ``image`` (N,) picks each question's image row (default: same row)."""
        if image is not None:
            memory = {name: value[image] for name, value in memory.items()}
        u0 = self.encode_question(question)
        if self.fusion == "product":
            v = torch.tanh(self.image_vector(memory["features"].flatten(1)))
            return self.classifier(v * torch.tanh(self.question_vector(u0)))
        u, p = self.attend(memory, u0)
        if self.fusion == "attention":
            return self.classifier(u)
        weight = self.readout.weight - self.groups @ self.readout.weight  # centred within each answer kind
        c = (p[..., None] * memory["features"]).sum(1)
        return c @ weight.T + self.classifier(u0)

    def forward(self, images: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        if question.dim() != 2 or question.shape[0] != images.shape[0]:
            raise InputError(
                f"question must be (B, L) word ids with B={images.shape[0]}; got shape {tuple(question.shape)}"
            )
        return self.answer(self.memory(images), question)

    # --- the question-answerer protocol used by gradcam.language.explain ----------------------------
    def question_kwargs(self, question: str | torch.Tensor, batch: int = 1) -> dict[str, Any]:
        """``forward`` keyword arguments for a question given as text or as (B, L) / (L,) word ids."""
        if isinstance(question, str):
            ids = torch.tensor([self.vocab.encode(question, what="question")])
        else:
            ids = torch.as_tensor(question, dtype=torch.long)
            ids = ids[None] if ids.dim() == 1 else ids
        if ids.shape[0] == 1 and batch > 1:
            ids = ids.expand(batch, -1)
        return {"question": ids}


# --- saving and loading ------------------------------------------------------------------------------
KINDS: dict[str, type[nn.Module]] = {"captioner": SceneCaptioner, "vqa": SceneVQA}


def weights_path(kind: str) -> Path:
    """Path of the shipped weights file of ``kind`` ('captioner' or 'vqa')."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return Path(str(resources.files("gradcam.language").joinpath("weights", f"{kind}.pt")))


def save_model(model: nn.Module, path: str | Path, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``{format, kind, config, vocab, answers, state_dict, metrics}`` loadable with ``weights_only``."""
    kind = next(k for k, cls in KINDS.items() if isinstance(model, cls))
    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": dict(model.config),
        "vocab": list(model.vocab.words),
        "answers": list(getattr(model, "answers", ())),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_payload(kind: str, path: str | Path | None = None) -> dict[str, Any]:
    """The raw saved dictionary (metrics included) of a shipped or given weights file."""
    if path is None:
        path = weights_path(kind)
        if not path.is_file():
            raise FileNotFoundError(
                f"no {kind} weights at {path}; train them with `python scripts/train_language.py train`"
            )
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}", argument="weights")
    expected = f"a gradcam {kind} weights file (saved by gradcam.language.save_model)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as error:
        raise ModelLoadError(
            f"{path} is not {expected}: torch.load cannot read it ({short_reason(error)})", argument="weights"
        ) from error
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        found = f"format {payload.get('format')!r}" if isinstance(payload, Mapping) else type(payload).__name__
        raise ModelLoadError(f"{path} is not {expected}; it holds {found}", argument="weights")
    if payload.get("kind") != kind:
        raise ModelLoadError(
            f"{path} holds gradcam {payload.get('kind')} weights; expected {kind} weights", argument="weights"
        )
    return payload


def load_scene_model(kind: str, path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped (or given) synthetic-scene model of ``kind`` in eval mode on ``device``."""
    payload = load_payload(kind, path)
    try:
        name = "caption vocabulary" if kind == "captioner" else "question vocabulary"
        vocab = Vocabulary(payload["vocab"], name=name)
        if kind == "captioner":
            model: nn.Module = SceneCaptioner(vocab, **payload["config"])
        else:
            model = SceneVQA(vocab, tuple(payload["answers"]), **payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        where = weights_path(kind) if path is None else path
        reason = " ".join(str(error).split())  # load_state_dict's message lists the keys over several lines
        raise ModelLoadError(
            f"{where} does not build a {kind}: {type(error).__name__}: {reason[:400]}", argument="weights"
        ) from error
    return model.eval().to(device)


def load_captioner(path: str | Path | None = None, device: str | torch.device = "cpu") -> SceneCaptioner:
    """The shipped synthetic-scene captioner (or one saved at ``path``)."""
    return load_scene_model("captioner", path, device)  # type: ignore[return-value]


def load_vqa(path: str | Path | None = None, device: str | torch.device = "cpu") -> SceneVQA:
    """The shipped synthetic-scene VQA model (or one saved at ``path``)."""
    return load_scene_model("vqa", path, device)  # type: ignore[return-value]
