"""The metric objects of one map source, merged batch by batch and summarised into one table row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import LoadedModel
from .complexity import Complexity
from .faithfulness import ConfidenceChange, DeletionInsertion, OcclusionCorrelation
from .localization import BoxAccuracy, BoxEnergy, LocalizationError, PointingGame
from .results import EvaluationSettings
from .road import ROAD
from .robustness import Sensitivity
from .sanity import SanityCheck


class MetricSet:
    """The metric objects of one source (TorchCAM-style update / summary; merged with :meth:`merge`)."""

    NAMES = ("localization", "boxes", "pointing", "energy", "curves", "confidence", "occlusion")
    NAMES += ("road", "robustness", "complexity")
    NAMES += ("sanity",)

    def __init__(self, settings: EvaluationSettings, loaded: LoadedModel) -> None:
        s = settings
        self.localization = LocalizationError(s.threshold, s.iou, s.connectivity)
        self.boxes = BoxAccuracy(s.threshold, s.iou, s.connectivity, s.sweep)
        self.pointing = PointingGame(s.tolerance)
        self.energy = BoxEnergy()
        self.curves = DeletionInsertion(
            s.step, s.deletion_baseline, s.insertion_baseline, s.score, batch_size=s.curve_batch_size, seed=s.seed
        )
        pre = loaded.preprocess
        self.confidence = ConfidenceChange(pre.mean, pre.std, s.score, batch_size=s.curve_batch_size)
        self.occlusion = OcclusionCorrelation(s.patch, s.stride, s.fill, s.score, batch_size=s.curve_batch_size)
        self.road = ROAD(s.road_percentages, s.road_noise, s.score, batch_size=s.curve_batch_size, seed=s.seed)
        self.robustness = Sensitivity(max(s.robustness_samples, 1), s.robustness_radius, s.seed)
        self.complexity = Complexity()
        self.sanity = SanityCheck(s.sanity_modes, s.seed)

    def merge(self, other: MetricSet) -> MetricSet:
        """Append another batch's state, metric by metric (see :mod:`.state`)."""
        for name in self.NAMES:
            getattr(self, name).merge(getattr(other, name))
        return self

    def summary(self, tasks: Sequence[str], occlusion: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "localization" in tasks:
            loc = self.localization.summary()
            k = loc["k"]
            out.update(
                {
                    "top1_loc_error": loc["top1_loc_error"],
                    "topk_loc_error": loc[f"top{k}_loc_error"],
                    "top1_cls_error": loc["top1_cls_error"],
                    "topk_cls_error": loc[f"top{k}_cls_error"],
                    "k": k,
                }
            )
        if "localization" in tasks or "pointing" in tasks:
            boxes = self.boxes.summary()
            pointing = self.pointing.summary()
            energy = self.energy.summary()
            out.update(
                {
                    "box_accuracy": boxes["accuracy"],
                    "mean_iou": boxes["mean_iou"],
                    "pointing": pointing["accuracy"],
                    "pointing_overall": pointing["overall"],
                    "pointing_two_object": pointing["multi_class_accuracy"],
                    "points_at_other": pointing["confusion"],
                    "energy": energy["energy"],
                    "in_out_ratio": energy["ratio"],
                    "box_accuracy_two_object": boxes["multi_class_accuracy"],
                    "max_box_accuracy": boxes.get("max_accuracy"),
                    "best_threshold": boxes.get("best_threshold"),
                    "box_accuracy_by_threshold": boxes.get("accuracy_by_threshold"),
                }
            )
        if "faithfulness" in tasks:
            curves = self.curves.summary()
            confidence = self.confidence.summary()
            out.update(
                {
                    "deletion_auc": curves["deletion_auc"],
                    "insertion_auc": curves["insertion_auc"],
                    "average_drop": confidence["average_drop"],
                    "increase_in_confidence": confidence["increase_in_confidence"],
                }
            )
            if occlusion:
                out["rank_correlation"] = self.occlusion.summary()["rank_correlation"]
            out.update(self.extra_summary())
        if "sanity" in tasks:
            out.update(sanity_columns(self.sanity.summary()))
        return {key: value for key, value in out.items() if value is not None}

    def extra_summary(self) -> dict[str, Any]:
        """ROAD, Max/Avg-Sensitivity and complexity (of the explained top-1 maps), for the metrics that ran."""
        out: dict[str, Any] = {}
        if self.road.records:
            road = self.road.summary()
            out.update({key: road[key] for key in ("road_morf", "road_lerf", "road_gap")})
        if self.robustness.records:
            robustness = self.robustness.summary()
            out.update({key: robustness[key] for key in ("max_sensitivity", "avg_sensitivity")})
        if self.complexity.records:
            complexity = self.complexity.summary()
            out.update({key: complexity[key] for key in ("sparseness", "entropy")})
        return out


def sanity_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """The table's sanity numbers: the cascading curve's mean SSIM and |Spearman|, random-logit SSIM, and the
    verdict (pass / partial / FAIL, :mod:`.sanity`)."""
    return {
        "mprt_ssim": summary.get("mprt_ssim"),
        "mprt_spearman": summary.get("mprt_spearman"),
        "mprt_ssim_last": summary.get("mprt_ssim_last"),
        "mprt_spearman_last": summary.get("mprt_spearman_last"),
        "random_logit_ssim": summary.get("random_logit_ssim"),
        "sanity": summary.get("verdict"),
    }
