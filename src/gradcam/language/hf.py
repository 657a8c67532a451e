"""Adapters that put Hugging Face vision-language models on the same code path as the synthetic ones.

An adapter is an ``nn.Module`` that wraps the Hugging Face model (so the model's layers keep their
names under ``model.``), takes the image as its first argument as the engine expects, and answers the
small protocol of :mod:`gradcam.language.explain`:

- :class:`HFCaptioner` for BLIP-style captioning (``BlipForConditionalGeneration``) and
  ``VisionEncoderDecoderModel`` (ViT + GPT-2 and the like). The explained layer is the vision
  transformer's last block; its (B, 1 + h*w, D) tokens become a (B, D, h, w) grid through
  :class:`gradcam.reshape.TokenGrid` (the class token is dropped).
- :class:`HFQuestionAnswerer` for ViLT-style VQA (``ViltForQuestionAnswering``). ViLT shuffles the
  image patches before its transformer (``visual_embed`` samples them), so the only layer that is still a
  spatial grid is the patch embedding ``vilt.embeddings.patch_embeddings`` (B, D, h, w): the default.

Token ids come from the model's own tokenizer, which is optional: without one, give captions and
questions as id tensors (nothing is ever downloaded here). ``transformers`` is the ``hf`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError, LayerError
from ..reshape import TokenGrid

HF_HINT = 'Hugging Face models need the transformers package: pip install "gradcam[hf]"'


def require_transformers() -> Any:
    """The ``transformers`` module, or ImportError naming the ``hf`` extra."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(HF_HINT) from error
    return transformers


def _grid_of(vision_config: Any) -> tuple[int, int]:
    size, patch = vision_config.image_size, vision_config.patch_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    patch = patch if isinstance(patch, (tuple, list)) else (patch, patch)
    return size[0] // patch[0], size[1] // patch[1]


class HFCaptioner(nn.Module):
    """A captioning adapter: ``forward(pixel_values, input_ids, attention_mask)`` -> output with logits.

    Supports ``BlipForConditionalGeneration`` (explained layer: ``model.vision_model.encoder.layers[-1]``)
    and ``VisionEncoderDecoderModel`` with a ViT-like encoder (``model.encoder.encoder.layer[-1]``);
    ``layer`` / ``reshape`` / ``bos_id`` / ``eos_id`` override the defaults for other models.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        layer: str | None = None,
        reshape: Any = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.kind = type(model).__name__
        if hasattr(model, "vision_model") and hasattr(model, "text_decoder"):  # BLIP
            blocks = len(model.vision_model.encoder.layers)
            default_layer = f"model.vision_model.encoder.layers.{blocks - 1}"
            grid = _grid_of(config.vision_config)
            default_bos, default_eos = config.text_config.bos_token_id, config.text_config.sep_token_id
            self._text_key, self._mask_key = "input_ids", "attention_mask"
        elif hasattr(model, "encoder") and hasattr(model, "decoder") and hasattr(config, "decoder_start_token_id"):
            blocks = len(model.encoder.encoder.layer)
            default_layer = f"model.encoder.encoder.layer.{blocks - 1}"
            grid = _grid_of(config.encoder)
            default_bos = config.decoder_start_token_id
            default_eos = config.eos_token_id if config.eos_token_id is not None else config.decoder.eos_token_id
            self._text_key, self._mask_key = "decoder_input_ids", "decoder_attention_mask"
        elif layer is None:
            raise LayerError(
                f"no default layer for {self.kind}: pass layer=... (and reshape=TokenGrid(...) for token layers)"
            )
        else:
            default_layer, grid, default_bos, default_eos = layer, None, bos_id, eos_id
            self._text_key, self._mask_key = "input_ids", "attention_mask"
        self.layer = layer or default_layer
        self.reshape = reshape if reshape is not None else (TokenGrid("tokens", grid, 1) if grid is not None else None)
        self.bos_id = default_bos if bos_id is None else bos_id
        self.eos_id = default_eos if eos_id is None else eos_id
        if self.bos_id is None or self.eos_id is None:
            raise InputError(f"{self.kind}: pass bos_id= and eos_id= (the config does not name them)")

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> Any:
        kwargs = {self._text_key: input_ids}
        if attention_mask is not None:
            kwargs[self._mask_key] = attention_mask
        return self.model(pixel_values=pixel_values, **kwargs)

    def teacher_kwargs(self, tokens: torch.Tensor) -> dict[str, Any]:
        """``forward`` keyword arguments that feed ``tokens`` (B, L) by teacher forcing."""
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int = 20, beam: int = 1) -> torch.Tensor:
        """Caption ids (B, L) from the model's own ``generate`` (greedy, or beam search), start token first."""
        if beam < 1:
            raise InputError(f"beam must be >= 1; got {beam}")
        was_training = self.model.training
        self.model.eval()
        try:
            ids = self.model.generate(pixel_values=images, max_new_tokens=max_len, num_beams=beam, do_sample=False)
        finally:
            self.model.train(was_training)
        if int(ids[0, 0]) != self.bos_id:
            ids = torch.cat([torch.full_like(ids[:, :1], self.bos_id), ids], dim=1)
        return ids

    def token_words(self, tokens: torch.Tensor) -> list[str]:
        """Token strings from the tokenizer, or ``#id`` without one."""
        ids = [int(i) for i in tokens]
        if self.tokenizer is not None:
            return [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids)]
        return [f"#{i}" for i in ids]

    def encode_caption(self, caption: str) -> torch.Tensor:
        """(1, L) ids of ``caption`` with the start token first (needs a tokenizer)."""
        if self.tokenizer is None:
            raise InputError(f"{self.kind} was given no tokenizer: pass the caption as token ids")
        ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"]
        return torch.tensor([[self.bos_id, *ids, self.eos_id]])


class HFQuestionAnswerer(nn.Module):
    """A VQA adapter: ``forward(pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask)``.

    Built for ``ViltForQuestionAnswering`` (answers from ``config.id2label``; explained layer
    ``model.vilt.embeddings.patch_embeddings``); ``layer`` / ``reshape`` / ``answers`` override. ViLT's
    patch sampling draws from torch's global generator: the adapter restores its state after each call.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        layer: str | None = None,
        reshape: Any = None,
        answers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.kind = type(model).__name__
        if layer is None and not hasattr(model, "vilt"):
            raise LayerError(f"no default layer for {self.kind}: pass layer=...")
        self.layer = layer or "model.vilt.embeddings.patch_embeddings"
        self.reshape = reshape
        if answers is None:
            id2label = model.config.id2label
            answers = [str(id2label[i]) for i in range(len(id2label))]
        self.answers = tuple(answers)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> Any:
        devices = [pixel_values.device] if pixel_values.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                pixel_values=pixel_values,
                pixel_mask=pixel_mask,
            )

    def question_kwargs(self, question: str | torch.Tensor | Sequence[int], batch: int = 1) -> dict[str, Any]:
        """``forward`` keyword arguments for a question as text (needs a tokenizer) or (L,) / (B, L) ids."""
        if isinstance(question, str):
            if self.tokenizer is None:
                raise InputError(f"{self.kind} was given no tokenizer: pass the question as token ids")
            ids = torch.tensor([self.tokenizer(question)["input_ids"]])
        else:
            ids = torch.as_tensor(question, dtype=torch.long)
            ids = ids[None] if ids.dim() == 1 else ids
        if ids.shape[0] == 1 and batch > 1:
            ids = ids.expand(batch, -1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def load_hf(path: str, task: str, device: str | torch.device = "cpu") -> nn.Module:
    """A local Hugging Face checkpoint folder as an adapter (``task``: 'caption' or 'vqa'); never downloads.

    The tokenizer is loaded from the same folder when it has one.
    """
    transformers = require_transformers()
    if task not in ("caption", "vqa"):
        raise ValueError(f"task must be 'caption' or 'vqa'; got {task!r}")
    kwargs = {"local_files_only": True}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"{path!r} is not a local Hugging Face model folder: {error}") from None
    name = (config.architectures or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        cls = (
            transformers.AutoModelForVision2Seq
            if task == "caption"
            else transformers.AutoModelForVisualQuestionAnswering
        )
    model = cls.from_pretrained(path, **kwargs).eval().to(device)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return HFCaptioner(model, tokenizer) if task == "caption" else HFQuestionAnswerer(model, tokenizer)
