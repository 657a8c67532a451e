"""Word and answer targets: hand-computed values, and gradients against an independent re-implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradcam import GradCAM, GuidedGradCAM, TargetError
from gradcam.language.models import SceneCaptioner, normalize_images
from gradcam.language.scenes import SceneDataset
from gradcam.language.targets import AnswerTarget, CaptionTarget, WordTarget
from tolerances import assert_close, cam_magnitude, gamma, sum_atol, unit_roundoff


def test_word_target_reads_log_softmax_of_the_previous_step_by_hand() -> None:
    # vocabulary of 3; logits[:, t] scores the token at position t + 1
    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    tokens = torch.tensor([[0, 1, 0, 2]])
    # position 1: token 1 from uniform step 0 -> log(1/3); position 2: token 0 from [2, 0, 0]
    # -> 2 - log(e^2 + 2); position 3: token 2 from [0, 1, 3] -> 3 - log(1 + e + e^3)
    expected = [math.log(1 / 3), 2 - math.log(math.e**2 + 2), 3 - math.log(1 + math.e + math.e**3)]
    scores = WordTarget(tokens, [1, 2, 3])({"logits": logits})
    assert scores.shape == (1, 3)
    # float32 log-softmax x - log sum exp over 3 words: the sum of exps within gamma_3 (+ the exps' ulps) is
    # an absolute error of the log; the subtraction rounds values up to |x| + |lse| (~6 here)
    atol = 2 * gamma(3) + 4 * unit_roundoff() + 4 * unit_roundoff() * (3.0 + max(abs(v) for v in expected))
    torch.testing.assert_close(scores[0], torch.tensor(expected), rtol=0, atol=atol)
    single = WordTarget(tokens, 2)(logits)  # a plain tensor output works too
    assert single.shape == (1,) and math.isclose(float(single), expected[1], abs_tol=atol)
    logit_only = WordTarget(tokens, 3, log_prob=False)(logits)
    assert float(logit_only) == 3.0
    caption_atol = 3 * atol + sum_atol(3, sum(abs(v) for v in expected))  # three such words, summed
    assert math.isclose(float(CaptionTarget(tokens)(logits)), sum(expected), abs_tol=caption_atol)


def test_word_target_uses_generated_tokens_and_broadcasts_one_caption() -> None:
    logits = torch.randn(2, 3, 5)
    generated = torch.tensor([[1, 4, 2, 0], [1, 3, 3, 2]])
    scores = WordTarget(None, [1, 2])({"logits": logits, "tokens": generated})
    expected = F.log_softmax(logits, -1)
    # the target reads F.log_softmax of the same logits: the same floats
    assert torch.equal(scores[1], torch.stack([expected[1, 0, 3], expected[1, 1, 3]]))
    shared = WordTarget(torch.tensor([1, 4, 2]), [2])({"logits": logits})
    assert torch.equal(shared[:, 0], expected[:, 1, 2])


def test_word_target_errors_name_the_problem() -> None:
    logits = torch.zeros(1, 3, 4)
    with pytest.raises(TargetError, match="position 0 is the start token"):
        WordTarget(torch.tensor([[1, 2]]), [0])
    with pytest.raises(TargetError, match="past the caption"):
        WordTarget(torch.tensor([[1, 2, 3]]), [3])(logits)
    with pytest.raises(TargetError, match=r"\(B, L, vocab\) logits"):
        WordTarget(torch.tensor([[1, 2]]), 1)(torch.zeros(1, 4))
    with pytest.raises(TargetError, match="needs a model output with 'tokens'"):
        WordTarget(None, 1)(logits)
    with pytest.raises(TargetError, match=r"the captioning model output has none of \['logits'\]: it is a list"):
        WordTarget(torch.tensor([[1, 2]]), 1)(["not", "logits"])


def test_answer_target_values_and_errors() -> None:
    logits = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    assert AnswerTarget(2)(logits).tolist() == [4.0, 0.0]
    assert AnswerTarget([0, 1])(logits).tolist() == [1.0, 0.0]
    log_p = AnswerTarget(1, log_prob=True)(logits)
    # log-softmax of 3 zeros: the sum of exps within gamma_3 plus the exps' ulps, then a log near 1.1
    assert math.isclose(float(log_p[1]), math.log(1 / 3), abs_tol=2 * gamma(3) + 4 * unit_roundoff() * 2.2)
    with pytest.raises(TargetError, match="out of range"):
        AnswerTarget(3)(logits)


# --- an independent re-implementation of the attention captioner, from its parameters ------------
def reference_log_probs(model: SceneCaptioner, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log P(tokens[:, t] | image, tokens[:, <t]) for t = 1.., written out from the equations:
    GRU gates r, z, n by hand, attention by hand, coordinates rebuilt from scratch."""
    p = dict(model.named_parameters())
    batch, channels = features.shape[:2]
    ramp = torch.linspace(-1, 1, 8)
    xy = torch.tensor([[float(ramp[j]), float(ramp[i])] for i in range(8) for j in range(8)])  # row-major cells
    grid = torch.cat([features.reshape(batch, channels, 64).transpose(1, 2), xy.expand(batch, -1, -1)], -1)
    cells = torch.tanh(grid @ p["cells.weight"].T + p["cells.bias"])
    keys = cells @ p["att_v.weight"].T + p["att_v.bias"]
    h = torch.tanh(cells.mean(1) @ p["init.weight"].T + p["init.bias"])
    hidden = h.shape[1]
    out = []
    for t in range(tokens.shape[1] - 1):
        energy = torch.tanh(keys + (h @ p["att_h.weight"].T)[:, None]) @ p["att_w.weight"].T + p["att_w.bias"]
        weights = torch.softmax(energy[..., 0], dim=1)
        context = (weights[..., None] * cells).sum(1)
        x = torch.cat([p["embed.weight"][tokens[:, t]], context], -1)
        gi = x @ p["gru.weight_ih"].T + p["gru.bias_ih"]
        gh = h @ p["gru.weight_hh"].T + p["gru.bias_hh"]
        r = torch.sigmoid(gi[:, :hidden] + gh[:, :hidden])
        z = torch.sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
        n = torch.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
        h = (1 - z) * n + z * h
        logits = torch.cat([h, context], -1) @ p["out.weight"].T + p["out.bias"]
        out.append(torch.log_softmax(logits, -1).gather(1, tokens[:, t + 1 : t + 2])[:, 0])
    return torch.stack(out, 1)


def test_word_target_gradient_equals_independent_autograd(captioner: SceneCaptioner) -> None:
    images = normalize_images(SceneDataset(1).images([0, 1]))
    tokens = captioner.generate(images)[:, :8]
    positions = [1, 3, 4, 7]
    e = GradCAM(captioner, "encoder")(images, WordTarget(tokens, positions), forward_kwargs={"tokens": tokens})

    features = captioner.encoder(images).detach().requires_grad_(True)
    log_probs = reference_log_probs(captioner, features, tokens)
    # an independent decoder: its longest sums are the output layer's 384 features; each step chains about
    # 6 of them (attention keys, energies, context over 64 cells, GRU gates, output, log-softmax), 7 steps,
    # forward and back; the log-probabilities and logits are O(1)
    terms, depth = 384, 2 * 6 * 7
    score_atol = sum_atol(terms, max(1.0, float(log_probs.detach().abs().max())), depth=depth)
    torch.testing.assert_close(e.scores, log_probs[:, [p - 1 for p in positions]].detach(), rtol=0, atol=score_atol)
    for j, position in enumerate(positions):
        (grad,) = torch.autograd.grad(log_probs[:, position - 1].sum(), features, retain_graph=True)
        alpha = grad.mean(dim=(2, 3))
        magnitude = float(grad.abs().mean(dim=(2, 3)).max())
        assert_close(e.weights[:, j], alpha, terms=terms, magnitude=magnitude, depth=depth)
        raw = torch.relu((alpha[:, :, None, None] * features.detach()).sum(1))
        raw_atol = sum_atol(terms, cam_magnitude(e.weights[:, j], features), depth=depth + 1)
        torch.testing.assert_close(e.raw[:, j], raw, rtol=0, atol=raw_atol)
    assert float(e.weights.abs().sum()) > 0


def test_generated_and_teacher_forced_captions_give_identical_maps(captioner: SceneCaptioner) -> None:
    images = normalize_images(SceneDataset(1).images([2, 3]))
    generated = captioner(images, max_len=18)["tokens"]  # free-running greedy decoding
    length = int((generated[0] == captioner.eos_id).nonzero()[0, 0])
    positions = list(range(1, length + 1))
    for method in (GradCAM(captioner, "encoder"), GuidedGradCAM(captioner, "encoder")):
        free = method(images, WordTarget(None, positions), forward_kwargs={"max_len": 18})
        forced = method(images, WordTarget(generated, positions), forward_kwargs={"tokens": generated})
        # decoding step by step runs the same GRU steps on the same tokens either way: the same floats
        assert torch.equal(free.scores, forced.scores)
        assert torch.equal(free.heatmap, forced.heatmap)
        assert torch.equal(free.raw, forced.raw)
    # and the maps differ from word to word (else the identity above would be vacuous)
    assert float((forced.raw[0, 0] - forced.raw[0, 2]).abs().max()) > 1e-3
