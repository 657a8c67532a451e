"""explain_caption / explain_answer on the shipped models: numbers, identities, model hygiene."""

from __future__ import annotations

import copy

import pytest
import torch

from gradcam import GradCAM, InputError
from gradcam.language import CaptionTarget, explain_answer, explain_caption, scene_tensor
from gradcam.language.models import SceneCaptioner, SceneVQA
from gradcam.language.scenes import HELDOUT_SEED, make_scene
from gradcam.language.targets import WordTarget
from tolerances import assert_close, cam_magnitude, gamma, heatmap_atol, layer_output, sum_atol, unit_roundoff


def state(model: torch.nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [(name, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()],
    )


def test_explain_caption_generates_the_right_caption_and_one_map_per_word(captioner: SceneCaptioner) -> None:
    scene = make_scene(HELDOUT_SEED, 11)
    captioner.train()  # a model in training mode is explained in eval mode and handed back as it was
    before = state(captioner)
    e = explain_caption(captioner, scene_tensor(11))
    assert state(captioner) == before
    captioner.eval()
    assert e.caption == scene.caption
    assert e.words == tuple(scene.caption.split())
    assert e.gradcam.shape == (len(e.words), 64, 64) and e.guided_gradcam.shape == (len(e.words), 3, 64, 64)
    # log_probs are the teacher-forced log-probabilities of the words; their sum is log P(caption)
    tokens = e.tokens[None]
    total = CaptionTarget(tokens[:, :-1])(captioner(scene_tensor(11), tokens[:, :-1]))
    # the same teacher-forced log-probabilities, summed over the caption's words in two orders
    assert_close(e.log_probs.sum(), total[0].detach(), terms=len(e.words), magnitude=float(e.log_probs.abs().sum()))
    # Guided Grad-CAM = guided backprop x the upsampled Grad-CAM: zero wherever Grad-CAM is zero
    assert bool((e.guided_gradcam.abs().sum(1)[e.gradcam == 0] == 0).all())


def test_beam_search_caption_matches_greedy_when_the_model_is_sure(captioner: SceneCaptioner) -> None:
    x = scene_tensor(12)
    greedy = captioner.generate(x)
    beam = captioner.generate(x, beam=3)
    assert torch.equal(greedy, beam)
    with pytest.raises(InputError, match="beam"):
        captioner.generate(x, beam=0)


def test_explain_a_given_caption_and_its_errors(captioner: SceneCaptioner) -> None:
    scene = make_scene(HELDOUT_SEED, 11)
    wrong = scene.caption.replace(
        scene.objects[0].shape, "square" if scene.objects[0].shape != "square" else "circle", 1
    )
    e = explain_caption(captioner, scene_tensor(11), wrong, guided=False)
    right = explain_caption(captioner, scene_tensor(11), scene.caption, guided=False)
    shape_index = 3  # "a SIZE COLOUR SHAPE": the first shape word
    assert e.words[shape_index] != right.words[shape_index]
    assert float(e.log_probs[shape_index]) < float(right.log_probs[shape_index]) - 3
    # the GRU decodes step by step: the words before the change are the same computation, the same floats
    assert torch.equal(e.log_probs[:shape_index], right.log_probs[:shape_index])
    assert e.guided_gradcam is None
    with pytest.raises(InputError, match="'giraffe'"):
        explain_caption(captioner, scene_tensor(11), "a small giraffe")
    with pytest.raises(InputError, match="one image"):
        explain_caption(captioner, torch.zeros(2, 3, 64, 64))


def test_explain_answer_and_its_counterfactual(vqa: SceneVQA) -> None:
    scene = make_scene(HELDOUT_SEED, 21)
    subject = scene.objects[0]
    question = f"what colour is the {subject.shape}?"
    a = explain_answer(vqa, scene_tensor(21), question)
    assert a.answer == a.predicted == subject.colour
    with torch.no_grad():
        logits = vqa(scene_tensor(21), vqa.question_kwargs(question)["question"])[0]
    assert a.score == float(logits.max())  # the same forward pass: the same floats
    # probabilities of a softmax over the 10 answers (its sum of exps in any order), 5 of them added
    top_rtol = 2 * gamma(len(vqa.answers)) + 8 * unit_roundoff() + gamma(5)
    assert sum(p for _, p in a.top) == pytest.approx(float(logits.softmax(-1).topk(5).values.sum()), rel=top_rtol)
    # the counterfactual map is Grad-CAM of -y: the engine negates the weights, nothing else
    cam = GradCAM(vqa, "encoder")
    kwargs = {"forward_kwargs": vqa.question_kwargs(question)}
    plain = cam(scene_tensor(21), a.answer_index, **kwargs)
    counter = cam(scene_tensor(21), a.answer_index, counterfactual=True, **kwargs)
    assert torch.equal(counter.weights, -plain.weights)
    c = explain_answer(vqa, scene_tensor(21), question, counterfactual=True, guided=False)
    assert torch.equal(c.raw, counter.raw[0])  # explain_answer runs this same counterfactual Grad-CAM
    assert not bool(((c.raw > 0) & (a.raw > 0)).any())
    other = explain_answer(vqa, scene_tensor(21), question, answer="large", guided=False)
    assert other.answer == "large" and other.score == float(logits[vqa.answers.index("large")])
    with pytest.raises(InputError, match="'huge'"):
        explain_answer(vqa, scene_tensor(21), question, answer="huge")


def test_word_target_positions_can_be_batched(captioner: SceneCaptioner) -> None:
    """Two images explained together give the maps each gets alone."""
    x = torch.cat([scene_tensor(11), scene_tensor(12)])
    tokens = captioner.generate(x)[:, :6]
    model, x = copy.deepcopy(captioner).double(), x.double()  # float64: the batching's own rounding is ~1e-16
    cam = GradCAM(model, "encoder")
    both = cam(x, WordTarget(tokens, [1, 2, 5]), forward_kwargs={"tokens": tokens})
    one = cam(x[1:], WordTarget(tokens[1:], [1, 2, 5]), forward_kwargs={"tokens": tokens[1:]})
    # a batch of 2 against 1 in float64: the encoder's 4 convs (longest 32 * 3 * 3 = 288 terms) and the decoder's
    # 5 steps of ~6 sums (longest: the output layer's 384 features), forward and back; the maps are then made in
    # float32 from A and dy/dA cast to it: alpha's 64 cells and the channel sum
    magnitude = cam_magnitude(one.weights, layer_output(model, "encoder", x[1:], tokens=tokens[1:]))
    raw_atol = sum_atol(384, magnitude, torch.float64, depth=2 * (4 + 6 * 5)) + sum_atol(64, magnitude, depth=2)
    torch.testing.assert_close(both.raw[1], one.raw[0], rtol=0, atol=raw_atol)
    # a heatmap divides by its map's span (here 1e-4 or less, against channel sums of size 1.6): it is compared
    # only where the span is well above the raw maps' error; the raw maps above carry the check otherwise
    spans = one.raw[0].amax((-2, -1)) - one.raw[0].amin((-2, -1))
    conditioned = spans > 100 * raw_atol
    if bool(conditioned.any()):
        atol = heatmap_atol(one.raw[0][conditioned], (64, 64), raw_atol)
        torch.testing.assert_close(both.heatmap[1][conditioned], one.heatmap[0][conditioned], rtol=0, atol=atol)


def _readout_row(model: SceneVQA, answer: int) -> torch.Tensor:
    """``(W - G W)[answer] * scale / 64``: the centred readout row, spread over the 8 x 8 cells."""
    weight = model.readout.weight - model.groups @ model.readout.weight
    return weight[answer] * model.feature_scale / 64


def _cell_gradient_means(
    model: SceneVQA, x: torch.Tensor, answers: torch.Tensor, question: torch.Tensor
) -> torch.Tensor:
    """An independent autograd reference: (mean over cells of d y_answer / dA, mean over cells of |d y / dA|)."""
    store: list[torch.Tensor] = []
    handle = model.encoder.register_forward_hook(lambda module, inputs, output: store.append(output))
    try:
        logits = model(x, question)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[torch.arange(len(answers)), answers].sum(), store[0])
    return torch.stack([grad.mean((-2, -1)), grad.abs().mean((-2, -1))])


def _readout_error_and_bound(
    model: SceneVQA, x: torch.Tensor, answers: torch.Tensor, question: str
) -> tuple[float, float]:
    """Grad-CAM's alpha against the readout row, relative to its largest entry, and the float32 bound on it.

    The model runs in float64 (its activations and gradients are exact to ~1e-16); Grad-CAM casts them to
    float32 and averages 64 cells, so alpha is within sum_atol(64, mean |dy/dA|) of the exact value.
    """
    model = copy.deepcopy(model).double()
    x = x.double()
    kwargs = model.question_kwargs(question, batch=len(x))
    alpha = GradCAM(model, "encoder")(x, answers, forward_kwargs=kwargs).weights
    expected = torch.stack([_readout_row(model, int(a)) for a in answers]).detach()
    _, magnitude = _cell_gradient_means(model, x, answers, kwargs["question"])
    scale = float(expected.abs().max())
    return float((alpha.double() - expected).abs().max()) / scale, sum_atol(64, float(magnitude.max())) / scale


@pytest.mark.parametrize("keys, values, exact", [("linear", "positions", True), ("cells", "cells", False)])
def test_readout_fusion_gradcam_weights_are_the_answer_readout(keys: str, values: str, exact: bool) -> None:
    """Softmax attention's gradients sum to 0 over the cells, so with keys linear in A (the same Jacobian
    in every cell) and hops that pass on only positions, Grad-CAM's alpha is exactly the answer's readout
    row / 64; tanh keys and cell values break the identity (at random weights, by about 1e-4)."""
    torch.manual_seed(0)
    model = SceneVQA(fusion="readout", keys=keys, values=values, feature_scale=1.0).eval()
    x = torch.cat([scene_tensor(4), scene_tensor(9)])
    error, bound = _readout_error_and_bound(model, x, torch.tensor([0, 7]), "what colour is left of the circle")
    # exact: only float32 rounding is left; broken: the error is far above any rounding (1.1e-4 vs 8e-6)
    assert (error <= bound) if exact else (error > 10 * bound), (error, bound)


def test_shipped_vqa_gradcam_weights_are_the_answer_readout(vqa: SceneVQA) -> None:
    scene = make_scene(HELDOUT_SEED, 21)
    e = explain_answer(vqa, scene_tensor(21), f"what shape is the {scene.objects[1].colour} object", guided=False)
    error, bound = _readout_error_and_bound(vqa, scene_tensor(21), torch.tensor([e.answer_index]), e.question)
    assert error <= bound, (error, bound)
    # and in float64 the identity itself holds to float64 rounding (the float32 bound above is Grad-CAM's cast)
    model = copy.deepcopy(vqa).double()
    question = model.question_kwargs(e.question)["question"]
    mean, magnitude = _cell_gradient_means(model, scene_tensor(21).double(), torch.tensor([e.answer_index]), question)
    assert_close(mean[0], _readout_row(model, e.answer_index).detach(), terms=64, magnitude=float(magnitude.max()))
