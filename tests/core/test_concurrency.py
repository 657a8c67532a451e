"""Several threads explaining one shared model: each call captures its own thread's activations, and the
training flags are restored once, by the last call to leave (gradcam.capture)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gradcam
from gradcam.capture import model_guard
from gradcam.errors import MethodError
from tolerances import assert_close

METHODS = [gradcam.GradCAM, gradcam.HiResCAM, gradcam.LayerCAM, gradcam.AblationCAM]


class Rendezvous(nn.Module):
    """conv -> ReLU -> GAP + linear, whose forward waits for ``parties`` threads before and after the layer,
    so every thread's forward runs while every other thread's hooks are registered on the same layer."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.parties = parties
        self.before = threading.Barrier(parties)
        self.after = threading.Barrier(parties)
        self.saw_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parties > 1:
            self.before.wait(timeout=30)
        a = self.features(x)
        if self.parties > 1:
            self.after.wait(timeout=30)
        self.saw_training.append(self.training)
        return self.fc(torch.relu(a).mean((2, 3)))


def shared_model(parties: int) -> Rendezvous:
    torch.manual_seed(0)
    return Rendezvous(parties)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_two_threads_on_one_model_get_their_own_maps(method) -> None:
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)]
    alone = shared_model(1)
    expected = [method(alone, "features")(x, c) for c, x in enumerate(inputs)]
    model = shared_model(2).train()  # training mode: each call must still run in eval mode, restored after
    model.load_state_dict(alone.state_dict())
    results: list[object] = [None, None]

    def explain(i: int) -> None:
        try:
            results[i] = method(model, "features")(inputs[i], i)
        except Exception as error:  # reported by the assertion below, with its message
            results[i] = error

    threads = [threading.Thread(target=explain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for got, want in zip(results, expected):
        assert isinstance(got, gradcam.Explanation), got
        # the same float32 computation: conv (27 terms) -> GAP (64) -> linear (6); the map sums 6 channels
        assert_close(got.raw, want.raw, terms=27 * 64 * 6, depth=2)
        assert_close(got.heatmap, want.heatmap, terms=27 * 64 * 6, depth=3)
    assert not any(model.saw_training)
    assert all(m.training for m in model.modules())


def test_a_guard_that_leaves_first_does_not_restore_the_flags_under_another_call() -> None:
    """Thread 1 enters first and leaves while the main thread's call is still inside: the model must stay
    in eval mode for the main thread, and the flags found by the first guard come back after the last."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    entered, release = threading.Event(), threading.Event()

    def first() -> None:
        with model_guard(model):
            entered.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(timeout=30)
    with model_guard(model):
        release.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert not any(m.training for m in model.modules())  # the first guard left; this call is still inside
    assert all(m.training for m in model.modules())


def test_eval_mode_asked_while_another_call_trains_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with model_guard(model, eval_mode=False):
        expected = r"Sequential is being explained with eval_mode=False by another call"
        with pytest.raises(MethodError, match=expected), model_guard(model):
            pass
        assert all(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    with model_guard(model):  # after the other call left, eval mode is granted again
        assert not any(m.training for m in model.modules())
