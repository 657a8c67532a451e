"""Tests for gradcam.capture.model_guard: eval mode inside, every module's training flag restored after."""

from __future__ import annotations

import pytest
from torch import nn

from gradcam.capture import model_guard


class CountingTrain(nn.Module):
    """Counts calls of train() (a user override with side effects, e.g. freezing batch norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inner = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))

    def train(self, mode: bool = True) -> CountingTrain:
        self.calls += 1
        return super().train(mode)


def test_mixed_training_flags_are_eval_inside_and_restored_after() -> None:
    model = CountingTrain().train()
    model.inner[1].eval()  # a submodule the user froze
    before = [m.training for m in model.modules()]
    with model_guard(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before == [True, True, True, False]


def test_flags_are_restored_after_an_error() -> None:
    model = CountingTrain().train()
    with pytest.raises(RuntimeError), model_guard(model):
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


def test_a_model_already_in_eval_mode_is_left_alone() -> None:
    model = CountingTrain().eval()
    calls = model.calls
    with model_guard(model):
        assert not any(m.training for m in model.modules())
    assert model.calls == calls  # no eval() call, so no user train() side effect
    assert not any(m.training for m in model.modules())


def test_eval_mode_false_keeps_training_mode_inside() -> None:
    model = CountingTrain().train()
    with model_guard(model, eval_mode=False):
        assert all(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
