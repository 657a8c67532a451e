"""Training the synthetic CNN (seeded, CPU, a few minutes); ``scripts/train_synthetic.py`` is the command.

Every training image is new (image ``i`` of seed :data:`~.synthetic.TRAIN_SEED`), so there are no
epochs and no over-fitting to a fixed set. The loss is the cross-entropy against the target
distribution (1 on a one-object image's class, 1/2 on each class of a two-object image). Accuracy is
measured on held-out images of another seed: top-1 on one-object images, and "top-2 = the two classes"
on two-object images.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .synthetic import CLASSES, EVAL_SEED, TRAIN_SEED, SyntheticCNN, SyntheticShapes, target_distribution, to_tensor

logger = logging.getLogger("gradcam")


class _TrainingImages(Dataset):
    def __init__(self, shapes: SyntheticShapes) -> None:
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.shapes[index]
        return to_tensor(item.pixels), target_distribution(item.objects)


def classifier_accuracy(model: torch.nn.Module, shapes: SyntheticShapes, batch_size: int = 128) -> dict[str, Any]:
    """Top-1 accuracy on one-object images and top-2-set accuracy on two-object images, in percent."""
    hits = {1: 0, 2: 0}
    totals = {1: 0, 2: 0}
    model.eval()
    with torch.no_grad():
        for first in range(0, len(shapes), batch_size):
            items = [shapes[i] for i in range(first, min(first + batch_size, len(shapes)))]
            device = next(model.parameters()).device
            logits = model(torch.stack([to_tensor(item.pixels) for item in items]).to(device))
            top2 = logits.topk(2, dim=1).indices.tolist()
            for item, best in zip(items, top2):
                n = len(item.objects)
                totals[n] += 1
                hits[n] += int(set(best[:n]) == set(item.classes))
    return {
        "one_object_images": totals[1],
        "one_object_top1_accuracy": 100.0 * hits[1] / max(totals[1], 1),
        "two_object_images": totals[2],
        "two_object_top2_accuracy": 100.0 * hits[2] / max(totals[2], 1),
    }


def train_synthetic_cnn(
    steps: int = 1200,
    batch_size: int = 64,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    threads: int | None = 1,
    workers: int = 1,
    eval_images: int = 1000,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[SyntheticCNN, dict[str, Any]]:
    """Train :class:`~.synthetic.SyntheticCNN` on CPU; returns the model (eval mode) and a record of the run."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = SyntheticCNN()
    images = _TrainingImages(SyntheticShapes(steps * batch_size, seed=TRAIN_SEED))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    running = None
    for step, (x, target) in enumerate(loader):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if progress is not None:
            progress(step + 1, running)
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = classifier_accuracy(model, SyntheticShapes(eval_images, seed=EVAL_SEED))
    record = {
        "classes": list(CLASSES),
        "steps": steps,
        "batch_size": batch_size,
        "training_images": steps * batch_size,
        "train_seed": TRAIN_SEED,
        "torch_seed": seed,
        "lr": lr,
        "weight_decay": weight_decay,
        "final_loss": running,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "eval_seed": EVAL_SEED,
        "eval_images": eval_images,
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in accuracy.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    logger.info("synthetic CNN trained in %.0f s: %s", seconds, accuracy)
    return model, record
