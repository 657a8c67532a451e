"""Merging the batches' parts, in batch order, into one :class:`.results.EvaluationResult`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..models import LoadedModel
from .datasets import AnnotatedImage
from .examples import keep_if_better
from .metric_set import MetricSet
from .results import EvaluationResult, EvaluationSettings, Example, FigureRow, MethodResult, cost
from .resume import BatchPart
from .sources import MapSource, title


def combine(
    loaded: LoadedModel,
    items: Sequence[AnnotatedImage],
    settings: EvaluationSettings,
    order: list[str],
    failures: dict[str, str],
    parts: list[BatchPart],
    sources: Sequence[MapSource],
) -> EvaluationResult:
    """Merge the batches' parts in batch order into one result (the same numbers however the batches
    were shared out between processes and reruns)."""
    parts = sorted(parts, key=lambda part: part.first)
    failures = dict(failures)
    for part in parts:
        for name, reason in part.failures.items():
            failures.setdefault(name, reason)
    live = [name for name in order if name not in failures]
    metrics = {name: MetricSet(settings, loaded) for name in live}
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    examples: dict[str, dict[str, Example]] = defaultdict(dict)
    hits = {"top1": 0, "topk": 0}
    figure: list[FigureRow] = []
    for part in parts:
        for name in live:
            if name in part.metrics:
                metrics[name].merge(part.metrics[name])
        rows.update(part.rows)
        for name, candidates in part.examples.items():
            for kind, example in candidates.items():
                keep_if_better(examples[name], kind, example)
        for counter in hits:
            hits[counter] += part.hits[counter]
        figure += [row for row in part.figure if all(name in row.maps for name in live)]
    for kept in examples.values():
        for example in kept.values():
            example.image = items[example.index].load()
    for row in figure:
        row.image = items[row.index].load()
    by_name = {source.name: source for source in sources}
    results = [
        MethodResult(
            name, by_name[name].title, by_name[name].is_baseline, by_name[name].layer,
            {**metrics[name].summary(settings.tasks, settings.occlusion),
             **cost([part.timings[name] for part in parts if name in part.timings])},
        )
        for name in live
    ]  # fmt: skip
    results += [MethodResult(name, title(name), False, None, {}, reason) for name, reason in failures.items()]
    curves = {}
    if "faithfulness" in settings.tasks:
        for name in live:
            m = metrics[name].curves
            deletion, insertion = m.mean_curve("deletion"), m.mean_curve("insertion")
            if deletion is not None and m.fractions is not None:
                curves[name] = {
                    "fractions": m.fractions.tolist(),
                    "deletion": deletion.tolist(),
                    "insertion": insertion.tolist(),
                }
    sanity = {name: metrics[name].sanity.curves() for name in live if metrics[name].sanity.records}
    seen = sum(len(part.names) for part in parts)
    k = parts[0].k if parts else settings.top_k
    classification = {
        "images": seen,
        "top1_accuracy": 100.0 * hits["top1"] / max(seen, 1),
        f"top{k}_accuracy": 100.0 * hits["topk"] / max(seen, 1),
    }
    position = {name: i for i, name in enumerate(order)}
    per_image = [rows[key] for key in sorted(rows, key=lambda key: (key[0], position.get(key[1], 0)))]
    return EvaluationResult(
        model=loaded.name,
        settings=settings,
        methods=results,
        per_image=per_image,
        curves=curves,
        examples=dict(examples),
        classification=classification,
        images=seen,
        seconds=0.0,
        labels=loaded.labels,
        figure=[row for row in figure if row.maps],
        sanity=sanity,
    )
