"""The measured claims of docs/language.md hold on the shipped weights (a smaller held-out set),
and the metrics behind them are right on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from gradcam.evaluation.statistics import average_ranks, spearman
from gradcam.language.claims import THRESHOLDS, caption_claims, claims_markdown, update_docs, vqa_claims
from gradcam.language.metrics import (
    box_mask,
    centre_map,
    inside_outside,
    occlusion_drops,
    pointing_hit,
    uniform_pointing,
    window_means,
)
from gradcam.language.models import SceneCaptioner, SceneVQA
from gradcam.language.scenes import heldout


def test_pointing_and_ratio_on_hand_made_maps() -> None:
    heatmap = torch.zeros(8, 8)
    heatmap[2, 5] = 1.0  # pixel centre (5.5, 2.5)
    assert pointing_hit(heatmap, (5, 2, 7, 4)) is True
    assert pointing_hit(heatmap, (0, 0, 4, 4)) is False
    assert pointing_hit(heatmap, (0, 0, 4, 4), tolerance=1.6) is True  # 5.5 <= 4 + 1.6
    assert pointing_hit(torch.ones(8, 8), (0, 0, 4, 4)) is None  # a flat map points nowhere
    assert uniform_pointing((0, 0, 4, 2), (8, 8)) == 8 / 64
    inside, outside = inside_outside(heatmap, (5, 2, 7, 4))  # 4 pixels inside, 60 outside
    assert inside == 0.25 and outside == 0.0
    assert int(box_mask((0, 0, 4, 2), (8, 8)).sum()) == 8
    centre = centre_map((8, 8))
    assert float(centre.max()) == float(centre[3, 3]) == float(centre[4, 4])


def test_rank_and_spearman_against_hand_values() -> None:
    assert average_ranks(torch.tensor([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # d = rank differences (0, 0, -1, 1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 2, 4, 3])) == pytest.approx(0.8)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))  # undefined; the claims count it as 0 (_rho)


def test_occlusion_drops_by_hand() -> None:
    image = torch.zeros(1, 4, 4)
    image[0, 0, 0] = 3.0  # the score is the sum of the image: occluding a window removes what it covers

    def score(batch: torch.Tensor) -> torch.Tensor:
        return batch.sum(dim=(1, 2, 3))

    drops = occlusion_drops(score, image, patch=2, stride=2, fill=0.0)
    assert drops.tolist() == [[3.0, 0.0], [0.0, 0.0]]
    assert window_means(torch.arange(16.0).reshape(4, 4), 2, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_update_docs_rewrites_only_the_generated_block(tmp_path) -> None:
    path = tmp_path / "doc.md"
    from gradcam.language.claims import BEGIN, END

    path.write_text(f"intro\n\n{BEGIN}\nold table\n{END}\n\noutro\n")
    update_docs(path, "new table")
    text = path.read_text()
    assert "new table" in text and "old table" not in text and text.startswith("intro") and "outro" in text


def test_caption_claims_hold_on_the_shipped_captioner(captioner: SceneCaptioner) -> None:
    result = caption_claims(captioner, heldout(24))
    everything = result["all"]
    assert everything["maps"] > 150
    assert everything["pointing"] >= THRESHOLDS["caption_pointing"]
    assert everything["ratio"] >= THRESHOLDS["caption_ratio"]
    # well above both baselines
    assert everything["pointing"] > everything["uniform_pointing"] + 0.2
    assert everything["pointing"] > everything["centre_pointing"] + 0.15
    assert everything["ratio"] > everything["centre_ratio"] + 1


def test_vqa_claims_hold_on_the_shipped_model(vqa: SceneVQA) -> None:
    result = vqa_claims(vqa, heldout(12), occlusion_scenes=8)
    assert result["answer_accuracy"] >= THRESHOLDS["vqa_answer_accuracy"]
    # question dependence: the map's maximum is on the asked object, far more often than on another one
    assert result["pointing"] >= THRESHOLDS["vqa_question_dependence"]
    assert result["pointing"] - result["other_object_pointing"] >= THRESHOLDS["vqa_asked_over_other"]
    assert result["pointing"] > result["uniform_pointing"] + 0.4
    # colours are distinct within a scene: the answer's colour is on the asked object only
    assert result["kind_pointing"]["colour"] >= 0.9
    assert result["spearman_n"] == 8 and not math.isnan(result["spearman"])
    assert result["spearman"] >= THRESHOLDS["vqa_spearman"]
    assert result["spearman"] > result["centre_spearman"] + 0.1
    assert result["spearman"] > result["other_question_spearman"] + 0.1


def test_markdown_table_reports_every_claim(captioner: SceneCaptioner, vqa: SceneVQA) -> None:
    result = {
        "caption": caption_claims(captioner, heldout(3)),
        "vqa": vqa_claims(vqa, heldout(2), occlusion_scenes=2),
        "settings": {"caption_scenes": 3, "vqa_scenes": 2, "occlusion_scenes": 2, "tolerance_px": 4.0},
        "seconds": 1.0,
    }
    table = claims_markdown(result)
    assert "inside/outside ratio" in table and "rank correlation with occlusion" in table
    assert "max on another object" in table and "colour questions" in table and "box as the map" in table
    assert f"{result['caption']['all']['ratio']:.2f}" in table
