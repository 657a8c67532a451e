"""Evaluating explanations: localization, pointing, faithfulness, and a synthetic ground-truth benchmark.

Metrics (each keeps state: ``update`` / ``summary`` / ``reset``):

- :class:`LocalizationError` — ILSVRC weakly-supervised localization (Grad-CAM §4.1), top-1/top-5.
- :class:`BoxAccuracy` — ground-truth-class box accuracy at IoU >= 0.5.
- :class:`PointingGame` — Zhang et al.'s pointing game, per-class mean accuracy, with a 15 px tolerance.
- :class:`BoxEnergy` — energy in the box and the mean-inside / mean-outside ratio.
- :class:`DeletionInsertion` — RISE's deletion / insertion AUC.
- :class:`ConfidenceChange` — Grad-CAM++'s Average Drop and Increase in Confidence.
- :class:`OcclusionCorrelation` — Spearman correlation with occlusion maps (Grad-CAM §5.3).
- :class:`SanityCheck` — Adebayo et al.'s model-parameter randomisation (cascading, independent) and the
  random-logit test, with a pass / FAIL verdict; :func:`parameter_randomisation`, :func:`random_logit`, :func:`ssim`.

Data: :func:`load_annotated_folder` (images + PASCAL-VOC XML, ImageNet WordNet ids) and
:class:`SyntheticShapes` with its trained CNN (:func:`load_synthetic_model`). :func:`evaluate` runs
every registered method and the trivial baselines; :func:`write_report` writes tables and figures.
"""

from __future__ import annotations

from .complexity import Complexity, gini, map_entropy
from .datasets import (
    AnnotatedImage,
    load_annotated_folder,
    read_voc_xml,
    voc_xml,
    write_annotated_folder,
)
from .faithfulness import (
    ConfidenceChange,
    DeletionInsertion,
    OcclusionCorrelation,
    auc,
    gaussian_blur,
    occlusion_map,
    perturbation_curves,
)
from .localization import BoxAccuracy, BoxEnergy, LocalizationError, PointingGame
from .regions import box_iou, connected_components, largest_component, map_to_box, peak_point, saliency_2d
from .report import format_table, write_report
from .results import TASKS, EvaluationResult, EvaluationSettings
from .runner import evaluate
from .sanity import (
    SanityCheck,
    parameter_randomisation,
    random_logit,
    randomisable_layers,
    randomised_models,
)
from .similarity import map_similarities, ssim
from .sources import BASELINES, default_methods
from .statistics import average_ranks, spearman
from .synthetic import CLASSES, SyntheticCNN, SyntheticShapes, load_synthetic_model, synthetic_items

__all__ = [
    "BASELINES",
    "CLASSES",
    "TASKS",
    "AnnotatedImage",
    "BoxAccuracy",
    "BoxEnergy",
    "Complexity",
    "ConfidenceChange",
    "DeletionInsertion",
    "EvaluationResult",
    "EvaluationSettings",
    "LocalizationError",
    "OcclusionCorrelation",
    "PointingGame",
    "SanityCheck",
    "SyntheticCNN",
    "SyntheticShapes",
    "auc",
    "average_ranks",
    "box_iou",
    "connected_components",
    "default_methods",
    "evaluate",
    "format_table",
    "gaussian_blur",
    "gini",
    "largest_component",
    "load_annotated_folder",
    "load_synthetic_model",
    "map_entropy",
    "map_similarities",
    "map_to_box",
    "occlusion_map",
    "parameter_randomisation",
    "peak_point",
    "perturbation_curves",
    "random_logit",
    "randomisable_layers",
    "randomised_models",
    "read_voc_xml",
    "saliency_2d",
    "spearman",
    "ssim",
    "synthetic_items",
    "voc_xml",
    "write_annotated_folder",
    "write_report",
]
