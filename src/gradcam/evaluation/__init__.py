"""Evaluating explanations: localization, pointing, faithfulness, and a synthetic ground-truth benchmark.

Metrics (each keeps state: ``update`` / ``summary`` / ``reset``):

- :class:`LocalizationError` — ILSVRC weakly-supervised localization (Grad-CAM §4.1), top-1/top-5.
- :class:`BoxAccuracy` — ground-truth-class box accuracy at IoU >= 0.5.
- :class:`PointingGame` — Zhang et al.'s pointing game, per-class mean accuracy, with a 15 px tolerance.
- :class:`BoxEnergy` — energy in the box and the mean-inside / mean-outside ratio.
- :class:`DeletionInsertion` — RISE's deletion / insertion AUC.
- :class:`ConfidenceChange` — Grad-CAM++'s Average Drop and Increase in Confidence.
- :class:`OcclusionCorrelation` — Spearman correlation with occlusion maps (Grad-CAM §5.3).
- :func:`adversarial_robustness` — how maps move under FGSM / PGD (:func:`fgsm`, :func:`pgd`; Grad-CAM §6.2).
- :class:`ROAD` — ROAD's MoRF / LeRF curves with noisy linear imputation (Rong et al. 2022).
- :class:`MaxSensitivity`, :class:`AvgSensitivity` (:class:`Sensitivity`: both) — robustness (Yeh et al. 2019).
- :class:`Complexity` — sparseness (Gini) and entropy of the maps.

The faithfulness metrics take the explainers' targets: class indices or a callable ``output -> (B,)``
(:func:`target_scores`).
- :class:`SanityCheck` — Adebayo et al.'s model-parameter randomisation (cascading, independent) and the
  random-logit test, with a pass / FAIL verdict; :func:`parameter_randomisation`, :func:`random_logit`, :func:`ssim`.

Data: :func:`load_annotated_folder` (images + PASCAL-VOC XML, ImageNet WordNet ids) and
:class:`SyntheticShapes` with its trained CNN (:func:`load_synthetic_model`). :func:`evaluate` runs
every registered method and the trivial baselines; :func:`write_report` writes tables and figures.
"""

from __future__ import annotations

from .adversarial import ATTACKS, AttackError, attack, fgsm, pgd
from .adversarial_experiment import EPSILONS, AdversarialResult, adversarial_robustness, sample_items
from .adversarial_report import adversarial_figure, format_adversarial_table, write_adversarial_report
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
from .road import ROAD, noisy_linear_imputation, road_curves
from .robustness import AvgSensitivity, MaxSensitivity, Sensitivity, sensitivities
from .runner import evaluate
from .sanity import (
    SanityCheck,
    parameter_randomisation,
    random_logit,
    randomisable_layers,
    randomised_models,
)
from .scoring import target_scores
from .similarity import map_similarities, ssim
from .sources import BASELINES, default_methods
from .statistics import average_ranks, spearman
from .synthetic import CLASSES, SyntheticCNN, SyntheticShapes, load_synthetic_model, synthetic_items

__all__ = [
    "ATTACKS",
    "BASELINES",
    "CLASSES",
    "EPSILONS",
    "ROAD",
    "TASKS",
    "AdversarialResult",
    "AnnotatedImage",
    "AttackError",
    "AvgSensitivity",
    "BoxAccuracy",
    "BoxEnergy",
    "Complexity",
    "ConfidenceChange",
    "DeletionInsertion",
    "EvaluationResult",
    "EvaluationSettings",
    "LocalizationError",
    "MaxSensitivity",
    "OcclusionCorrelation",
    "PointingGame",
    "SanityCheck",
    "Sensitivity",
    "SyntheticCNN",
    "SyntheticShapes",
    "adversarial_figure",
    "adversarial_robustness",
    "attack",
    "auc",
    "average_ranks",
    "box_iou",
    "connected_components",
    "default_methods",
    "evaluate",
    "fgsm",
    "format_adversarial_table",
    "format_table",
    "gaussian_blur",
    "gini",
    "largest_component",
    "load_annotated_folder",
    "load_synthetic_model",
    "map_entropy",
    "map_similarities",
    "map_to_box",
    "noisy_linear_imputation",
    "occlusion_map",
    "parameter_randomisation",
    "peak_point",
    "perturbation_curves",
    "pgd",
    "random_logit",
    "randomisable_layers",
    "randomised_models",
    "read_voc_xml",
    "road_curves",
    "saliency_2d",
    "sample_items",
    "sensitivities",
    "spearman",
    "ssim",
    "synthetic_items",
    "target_scores",
    "voc_xml",
    "write_adversarial_report",
    "write_annotated_folder",
    "write_report",
]
