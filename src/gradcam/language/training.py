"""Training and accuracy of the synthetic-scene models (CPU, a few minutes each).

Every training batch is fresh: step ``s`` uses training scenes ``s * batch .. (s + 1) * batch - 1`` of
the training split (seed 0), so nothing is stored and the run is reproducible from its seed. Accuracy is
reported on the first training scenes (seen once) and on held-out scenes (seed 1, never seen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations, product
from typing import Any

import torch
import torch.nn.functional as F

from .models import SceneCaptioner, SceneVQA, normalize_images, scene_encoder
from .scenes import (
    COLOURS,
    HELDOUT_SEED,
    IMAGE_SIZE,
    SHAPES,
    SIZES,
    TRAIN_SEED,
    Scene,
    SceneDataset,
    make_scene,
    object_mask,
)
from .vocab import ANSWERS, CAPTION_VOCAB, QUESTION_VOCAB, pad_batch

logger = logging.getLogger("gradcam")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings: Adam with a cosine learning-rate decay over ``steps`` batches."""

    steps: int = 2500
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0
    log_every: int = 100


def caption_batch(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, 64, 64) and caption ids (N, L) ``<bos> ... <eos>`` padded with 0."""
    images = normalize_images(SceneDataset(scenes[0].seed).images(scenes))
    tokens = pad_batch([CAPTION_VOCAB.encode(s.caption, bos=True, eos=True) for s in scenes])
    return images, tokens


# what the CNN is pretrained to detect (like an ImageNet CNN's classes): is there a red object, a circle,
# a small object, ... ("attributes"); "pairs" adds every pair of attributes (a red circle, a small circle,
# a small red object, ...), 41 labels that a GAP + linear head can only tell apart with object-selective
# channels
ENCODER_LABELS: tuple[str, ...] = (*COLOURS, *SHAPES, *SIZES)
ENCODER_LABEL_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "attributes": tuple((a,) for a in ENCODER_LABELS),
    "pairs": (
        *((a,) for a in ENCODER_LABELS),
        *(pair for first, second in combinations((tuple(COLOURS), SHAPES, tuple(SIZES)), 2)
          for pair in product(first, second)),
    ),
}  # fmt: skip


def scene_labels(
    scenes: list[Scene], labels: str = "attributes", visible: list[list[bool]] | None = None
) -> torch.Tensor:
    """(N, len(ENCODER_LABEL_SETS[labels])) multi-hot: label ``(a, b, ...)`` is 1 when one (visible)
    object of the scene has every attribute ``a, b, ...``."""
    label_set = ENCODER_LABEL_SETS[labels]
    out = torch.zeros(len(scenes), len(label_set))
    for row, scene in enumerate(scenes):
        for n, o in enumerate(scene.objects):
            if visible is not None and not visible[row][n]:
                continue
            has = {o.colour, o.shape, o.size}
            for column, label in enumerate(label_set):
                if has.issuperset(label):
                    out[row, column] = 1.0
    return out


def occlude(images: torch.Tensor, scenes: list[Scene], rate: float, seed: int) -> tuple[torch.Tensor, list[list[bool]]]:
    """Cutout (DeVries & Taylor 2017) with the background colour: each normalised image, with
    probability ``rate``, gets one square of 8-20 px set to 0 (the background); an object stays
    visible while at least half of its pixels do. Returns the images and the visible flags."""
    generator = torch.Generator().manual_seed(seed)
    images, visible = images.clone(), []
    for n, scene in enumerate(scenes):
        window = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        if float(torch.rand((), generator=generator)) < rate:
            side = int(torch.randint(8, 21, (), generator=generator))
            top, left = (int(v) for v in torch.randint(0, IMAGE_SIZE - side + 1, (2,), generator=generator))
            window[top : top + side, left : left + side] = True
            images[n][:, window] = 0.0
        masks = [object_mask(o) for o in scene.objects]
        visible.append([float((m & ~window).sum()) >= 0.5 * float(m.sum()) for m in masks])
    return images, visible


def train_encoder(
    config: TrainConfig = TrainConfig(steps=400),
    report: Callable[[str], None] | None = None,
    channels: int = 32,
    labels: str = "attributes",
    occlusion: float = 0.0,
) -> tuple[torch.nn.Sequential, dict[str, float]]:
    """Pretrain the CNN as a multi-label classifier (global average pooling + linear, the CAM form) of
    :data:`ENCODER_LABEL_SETS` ``[labels]``: the stand-in for an ImageNet-pretrained CNN; ``occlusion``:
    the rate of :func:`occlude` augmentation. Returns the CNN (frozen)."""
    if labels not in ENCODER_LABEL_SETS:
        raise ValueError(f"labels must be one of {', '.join(ENCODER_LABEL_SETS)}; got {labels!r}")
    torch.manual_seed(config.seed)
    encoder = scene_encoder(channels)
    head = torch.nn.Linear(channels, len(ENCODER_LABEL_SETS[labels]))
    model = torch.nn.Sequential(encoder, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)

    def loss_of_step(step: int) -> torch.Tensor:
        scenes = [make_scene(TRAIN_SEED, step * config.batch + i) for i in range(config.batch)]
        images = normalize_images(SceneDataset(TRAIN_SEED).images(scenes))
        visible = None
        if occlusion:
            images, visible = occlude(images, scenes, occlusion, config.seed * 1_000_003 + step)
        return F.binary_cross_entropy_with_logits(model(images), scene_labels(scenes, labels, visible))

    stats = _train(model, loss_of_step, config, report)
    scenes = split_scenes(300, heldout=True)
    with torch.no_grad():
        predicted = model(normalize_images(SceneDataset(HELDOUT_SEED).images(scenes))) > 0
    truth = scene_labels(scenes, labels).bool()
    stats["heldout_label_accuracy"] = float((predicted == truth).float().mean())
    stats["heldout_exact"] = float((predicted == truth).all(1).float().mean())
    return encoder.requires_grad_(False).eval(), stats


def _start_from(model: torch.nn.Module, encoder: torch.nn.Module | None, finetune: bool) -> None:
    """Copy a pretrained CNN into ``model.encoder``; frozen (fixed features) unless ``finetune``."""
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state_dict())
        model.encoder.requires_grad_(finetune)


def caption_loss(model: SceneCaptioner, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every caption word and ``<eos>`` under teacher forcing."""
    logits = model(images, tokens)["logits"][:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=0)


def _train(
    model: torch.nn.Module,
    loss_of_step: Callable[[int], torch.Tensor],
    config: TrainConfig,
    report: Callable[[str], None] | None,
) -> dict[str, float]:
    torch.manual_seed(config.seed)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    model.train()
    start, running = time.perf_counter(), 0.0
    for step in range(config.steps):
        loss = loss_of_step(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step else value
        if report and (step + 1) % config.log_every == 0:
            report(f"step {step + 1}/{config.steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"train_seconds": round(time.perf_counter() - start, 1), "final_loss": round(running, 4)}


def train_captioner(
    config: TrainConfig = TrainConfig(),
    report: Callable[[str], None] | None = None,
    encoder: torch.nn.Module | None = None,
    finetune: bool = False,
    **options: Any,
) -> tuple[SceneCaptioner, dict[str, float]]:
    """Train a :class:`SceneCaptioner` (``options``: its constructor's) on fresh training scenes, on the
    frozen pretrained CNN ``encoder`` when given (else end to end); returns it (eval) and stats."""
    torch.manual_seed(config.seed)
    model = SceneCaptioner(**options)
    _start_from(model, encoder, finetune)

    def loss_of_step(step: int) -> torch.Tensor:
        scenes = [make_scene(TRAIN_SEED, step * config.batch + i) for i in range(config.batch)]
        return caption_loss(model, *caption_batch(scenes))

    return model, _train(model, loss_of_step, config, report)


def train_vqa(
    config: TrainConfig = TrainConfig(batch=32),
    report: Callable[[str], None] | None = None,
    encoder: torch.nn.Module | None = None,
    finetune: bool = False,
    occlusion: float = 0.0,
    **options: Any,
) -> tuple[SceneVQA, dict[str, float]]:
    """Train a :class:`SceneVQA`: each step asks EVERY question of ``config.batch`` fresh training scenes
    (about 13 per scene), encoding each image once, on the frozen pretrained CNN ``encoder`` when given.
    ``occlusion``: the rate of :func:`occlude` augmentation; a question is then asked only when its
    object (for a relational question: every object) is still visible."""
    torch.manual_seed(config.seed)
    if encoder is not None and "feature_scale" not in options:  # CNN outputs of O(1) for the fusion layers
        with torch.no_grad():
            scenes = [make_scene(TRAIN_SEED, i) for i in range(config.batch)]
            spread = encoder(normalize_images(SceneDataset(TRAIN_SEED).images(scenes))).std()
        options = {**options, "feature_scale": round(1.0 / float(spread), 6)}
    model = SceneVQA(**options)
    _start_from(model, encoder, finetune)

    def loss_of_step(step: int) -> torch.Tensor:
        scenes = [make_scene(TRAIN_SEED, step * config.batch + i) for i in range(config.batch)]
        images = normalize_images(SceneDataset(TRAIN_SEED).images(scenes))
        visible = [[True] * len(s.objects) for s in scenes]
        if occlusion:
            images, visible = occlude(images, scenes, occlusion, config.seed * 1_000_003 + step)
        items = [
            (i, q)
            for i, s in enumerate(scenes)
            for q in s.questions
            if visible[i][q.subject] and (q.kind != "relation" or all(visible[i]))
        ]
        questions = pad_batch([QUESTION_VOCAB.encode(q.text) for _, q in items])
        answers = torch.tensor([ANSWERS.index(q.answer) for _, q in items])
        image = torch.tensor([i for i, _ in items])
        return F.cross_entropy(model.answer(model.memory(images), questions, image), answers)

    return model, _train(model, loss_of_step, config, report)


@torch.no_grad()
def caption_accuracy(model: SceneCaptioner, scenes: list[Scene], batch: int = 100) -> dict[str, float]:
    """Teacher-forced word accuracy (argmax = next word, ``<eos>`` included) and the fraction of greedy
    captions equal to the ground truth."""
    model.eval()
    correct = total = exact = 0
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        images, tokens = caption_batch(chunk)
        predicted = model(images, tokens)["logits"][:, :-1].argmax(-1)
        mask = tokens[:, 1:] != 0
        correct += int(((predicted == tokens[:, 1:]) & mask).sum())
        total += int(mask.sum())
        generated = model.generate(images)
        exact += sum(" ".join(CAPTION_VOCAB.decode(g)) == s.caption for g, s in zip(generated, chunk))
    return {"word_accuracy": correct / total, "caption_exact": exact / len(scenes), "scenes": len(scenes)}


@torch.no_grad()
def vqa_accuracy(model: SceneVQA, scenes: list[Scene], batch: int = 100) -> dict[str, float]:
    """Answer accuracy over every question of every scene, overall and per question kind."""
    model.eval()
    items = [(s, q) for s in scenes for q in s.questions]
    hits: dict[str, list[int]] = {}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = normalize_images(SceneDataset(chunk[0][0].seed).images([s for s, _ in chunk]))
        questions = pad_batch([QUESTION_VOCAB.encode(q.text) for _, q in chunk])
        predicted = model(images, questions).argmax(-1)
        for (_, q), p in zip(chunk, predicted.tolist()):
            hits.setdefault(q.kind, []).append(int(ANSWERS[p] == q.answer))
    everything = [h for values in hits.values() for h in values]
    out = {"answer_accuracy": sum(everything) / len(everything), "questions": len(everything)}
    out.update({f"accuracy_{kind}": sum(v) / len(v) for kind, v in sorted(hits.items())})
    return out


def split_scenes(count: int, heldout: bool) -> list[Scene]:
    """The first ``count`` scenes of the held-out split, or of the training split."""
    return [make_scene(HELDOUT_SEED if heldout else TRAIN_SEED, i) for i in range(count)]
