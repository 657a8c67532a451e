"""gradcam.targets.resolution.select_output: the one output selector behind every target and explainer."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import gradcam
from gradcam.language.targets import AnswerTarget
from gradcam.targets import ClassScore, PerImageTargets, SegmentationScore, select_output


@dataclass
class AttributeOutput:
    """An output object (not a mapping) holding its tensors as attributes."""

    logits: torch.Tensor
    hidden: torch.Tensor


def test_selection_rules():
    logits, out, aux = torch.randn(2, 3), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert select_output(logits) is logits  # a tensor as is
    assert select_output({"hidden": aux, "logits": logits}) is logits  # the default key
    assert select_output(AttributeOutput(logits, aux)) is logits  # or attribute
    assert select_output({"out": out, "aux": aux}, keys=("out", "logits")) is out  # the first key present
    assert select_output({"out": out, "logits": logits}, keys=("out", "logits")) is out
    assert select_output({"logits": None, "out": out}, keys=("logits", "out")) is out  # non-tensors are skipped
    assert select_output((aux, logits), 1) is logits  # an index
    assert select_output({"hidden": aux}, "hidden") is aux  # a key, over the defaults
    assert select_output((aux, logits), lambda o: o[0]) is aux  # a callable


def test_selection_errors_name_the_output():
    with pytest.raises(gradcam.TargetError, match=r"the VQA model output has none of \['logits'\]: it is a tuple"):
        select_output((torch.zeros(1),), what="VQA model output")
    with pytest.raises(gradcam.TargetError, match=r"output='pooler' is not in the model output; a dict with keys"):
        select_output({"logits": torch.zeros(1)}, "pooler")
    with pytest.raises(gradcam.TargetError, match="output selector gave int, expected a tensor"):
        select_output({"n": 3}, "n")


def test_every_reader_selects_the_same_tensor():
    """Class-index targets, task targets, per-image callables and the language targets read one tensor."""
    logits = torch.tensor([[1.0, -2.0, 4.0], [0.5, 3.0, -1.0]])
    for output in ({"logits": logits, "hidden": logits * 7}, AttributeOutput(logits, logits * 7)):
        resolved = gradcam.targets.resolve_target([2, 1], output, 2)
        assert resolved.scores[:, 0].tolist() == [4.0, 3.0]
        assert ClassScore([2, 1])(output).tolist() == [4.0, 3.0]
        assert PerImageTargets([lambda row: row[2], lambda row: row[1]])(output).tolist() == [4.0, 3.0]
        assert AnswerTarget([2, 1])(output).tolist() == [4.0, 3.0]
    segmentation = torch.zeros(1, 2, 2, 2)
    segmentation[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torchvision_like = {"out": segmentation, "aux": segmentation * 9}
    assert PerImageTargets([lambda row: row[1].sum()])(torchvision_like).tolist() == [10.0]
    assert SegmentationScore(1, torch.ones(2, 2))(torchvision_like).tolist() == [10.0]
