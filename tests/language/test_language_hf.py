"""The Hugging Face adapters on tiny random configurations of the real classes (no downloads, no tokenizer)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from gradcam import GradCAM
from gradcam.language.explain import explain_answer, explain_caption
from gradcam.language.hf import HFCaptioner, HFQuestionAnswerer, require_transformers
from gradcam.language.targets import WordTarget
from gradcam.reshape import TokenGrid
from tolerances import assert_close, cam_magnitude, gamma, sum_atol, unit_roundoff

transformers = pytest.importorskip("transformers")

VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="module")
def blip() -> HFCaptioner:
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        vision_config={**VISION, "image_size": 32, "patch_size": 8},
        text_config={
            **VISION,
            "vocab_size": 99,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "bos_token_id": 1,
            "pad_token_id": 0,
            "sep_token_id": 2,
            "eos_token_id": 2,
        },
    )
    return HFCaptioner(transformers.BlipForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def vilt() -> HFQuestionAnswerer:
    torch.manual_seed(0)
    labels = {i: f"answer{i}" for i in range(7)}
    config = transformers.ViltConfig(
        **VISION,
        image_size=32,
        patch_size=8,
        vocab_size=99,
        max_position_embeddings=40,
        num_labels=7,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    return HFQuestionAnswerer(transformers.ViltForQuestionAnswering(config).eval())


def test_token_grid_drops_the_class_token_and_keeps_row_major_order(blip: HFCaptioner) -> None:
    assert blip.reshape == TokenGrid("tokens", blip.reshape.grid, 1)  # the library's one TokenGrid, class token dropped
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class token + 2 x 2 patches
    grid = TokenGrid("tokens", (2, 2), 1)(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[0, :, 0, 1], tokens[0, 2])  # patch 1 = row 0, column 1
    assert torch.equal(grid[1, :, 1, 0], tokens[1, 3])


def test_blip_word_gradient_equals_independent_autograd(blip: HFCaptioner) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    tokens = torch.tensor([[1, 17, 42, 5, 2]])
    positions = [1, 2, 4]
    e = GradCAM(blip, blip.layer, reshape=blip.reshape)(
        x, WordTarget(tokens, positions), forward_kwargs=blip.teacher_kwargs(tokens)
    )
    # independently: a hook of our own on the last vision block, the full model with grad, log_softmax
    captured = {}

    def keep(module, inputs, output):
        captured["a"] = output
        output.retain_grad()

    handle = blip.model.vision_model.encoder.layers[-1].register_forward_hook(keep)
    try:
        logits = blip.model(pixel_values=x, input_ids=tokens).logits
    finally:
        handle.remove()
    log_p = F.log_softmax(logits, -1)
    # the text decoder after the vision layer: longest sums over the 99-word vocabulary (hidden 32, MLP 37);
    # two layers of self- and cross-attention and MLP, the head and the log-softmax (~16 steps), forward and back
    terms, depth = 99, 32
    score_atol = sum_atol(terms, max(1.0, float(log_p.detach().abs().max())), depth=depth)
    for j, p in enumerate(positions):
        score = log_p[0, p - 1, tokens[0, p]]
        torch.testing.assert_close(e.scores[0, j], score.detach(), rtol=0, atol=score_atol)
        (grad,) = torch.autograd.grad(score, captured["a"], retain_graph=True)
        alpha = grad[0, 1:].mean(0)  # patches only, spatial mean per hidden unit
        assert_close(e.weights[0, j], alpha, terms=terms, magnitude=float(grad[0, 1:].abs().mean(0).max()), depth=depth)
        grid = captured["a"][0, 1:].detach().T.reshape(32, 4, 4)
        raw_atol = sum_atol(terms, cam_magnitude(alpha[None], grid[None]), depth=depth + 1)
        torch.testing.assert_close(e.raw[0, j], torch.relu((alpha[:, None, None] * grid).sum(0)), rtol=0, atol=raw_atol)


def test_blip_generated_tokens_are_the_teacher_forced_argmax(blip: HFCaptioner) -> None:
    """The position convention (logits[:, t] scores token t + 1) matches Hugging Face generation."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32)
    generated = blip.generate(x, max_len=5)
    assert int(generated[0, 0]) == blip.bos_id
    logits = blip(x, **blip.teacher_kwargs(generated)).logits
    assert torch.equal(logits[0, :-1].argmax(-1), generated[0, 1:])
    e = explain_caption(blip, x, max_len=5)  # generates the same caption, explains every token
    assert torch.equal(e.tokens, generated[0, : len(e.tokens)])
    expected = F.log_softmax(logits[0, :-1], -1).max(-1).values[: len(e.log_probs)].detach()
    # the same tokens through the model again (other batching): the forward's ~16 steps of up to 99 terms
    atol = sum_atol(99, max(1.0, float(expected.abs().max())), depth=16)
    torch.testing.assert_close(e.log_probs, expected, rtol=0, atol=atol)
    assert e.gradcam.shape == (len(e.words), 32, 32) and e.guided_gradcam.shape == (len(e.words), 3, 32, 32)


def test_vilt_answer_map_counterfactual_and_rng(vilt: HFQuestionAnswerer) -> None:
    torch.manual_seed(3)
    x = torch.randn(1, 3, 32, 32)
    question = torch.tensor([5, 6, 7, 8])
    state = torch.random.get_rng_state()
    e = explain_answer(vilt, x, question, guided=False)
    assert torch.equal(state, torch.random.get_rng_state())  # ViLT's patch sampling left no trace
    with torch.no_grad():
        logits = vilt.model(input_ids=question[None], pixel_values=x).logits[0]
    assert e.predicted == f"answer{int(logits.argmax())}"
    # the logits of another forward pass (with hooks and gradients): ViLT's longest sums are its classifier's
    # 64 features, ~16 steps deep (2 layers of attention and MLP, pooler, classifier), on O(1) values; a
    # probability moves by at most 2 p max |d logit|, plus its own softmax over 7 answers
    logit_atol = sum_atol(64, max(1.0, float(logits.abs().max())), depth=16)
    probability_rtol = 2 * logit_atol + 2 * gamma(7) + 8 * unit_roundoff()
    assert e.probability == pytest.approx(float(logits.softmax(-1).max()), rel=probability_rtol)
    other = explain_answer(vilt, x, question, answer="answer3", counterfactual=True, guided=False)
    assert other.answer == "answer3" and other.score == pytest.approx(float(logits[3]), rel=0, abs=logit_atol)
    plain = explain_answer(vilt, x, question, answer=3, guided=False)
    # counterfactual = Grad-CAM of -y: ReLU(-S) beside ReLU(S) for the same signed sum S
    assert e.layer == "model.vilt.embeddings.patch_embeddings"
    assert not bool(((plain.raw > 0) & (other.raw > 0)).any())
    assert float(plain.raw.sum()) > 0 and float(other.raw.sum()) > 0


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "gradcam\[hf\]"'):
        require_transformers()
