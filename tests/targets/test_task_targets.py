"""Task targets: each scalar's Grad-CAM weights equal plain autograd; hand-worked segmentation and detection."""

from __future__ import annotations

import pytest
import torch

import gradcam
from conftest import GapNet, block_image
from gradcam.targets import (
    ClassScore,
    DetectionScore,
    EmbeddingSimilarity,
    SegmentationScore,
    SequenceLogProbability,
    Stack,
    TokenLogProbability,
    WeightedClasses,
    answer_score,
    embed,
    match_detections,
)
from targets.targets_support import (
    HandDetector,
    HandSegmenter,
    TinyCaptioner,
    assert_weights_close,
    autograd_reference,
    one_thread,  # noqa: F401  (autouse fixture)
)
from tolerances import cam_magnitude, layer_output, sum_atol

BLOCKS = [[1.0, 2.0], [3.0, -4.0]]  # A0 = these block means, A1 = -A0


@pytest.fixture
def net() -> GapNet:
    torch.manual_seed(0)
    return GapNet(inplace=False).eval()


def manual_kind(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Independent formulas: exp / sum exp, s - log sum exp, 1 / (1 + exp(-s))."""
    if kind == "logit":
        return logits
    if kind == "probability":
        return logits.exp() / logits.exp().sum(1, keepdim=True)
    if kind == "log_probability":
        return logits - logits.exp().sum(1, keepdim=True).log()
    return 1 / (1 + (-logits).exp())


# ---------------------------------------------------------------------------------------------- classes


@pytest.mark.parametrize("kind", ["logit", "probability", "log_probability", "sigmoid"])
def test_class_score_weights_equal_autograd(net, kind):
    x = torch.randn(3, 3, 8, 8)
    classes = [1, 3, 0]
    e = gradcam.GradCAM(net, "act")(x, ClassScore(classes, kind=kind))
    ref = autograd_reference(net, "act", x, lambda out: manual_kind(out, kind)[torch.arange(3), classes])
    assert_weights_close(e.weights, ref)
    torch.testing.assert_close(e.scores, ref.scores)


def test_class_logit_target_is_the_engine_class_target(net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    torch.testing.assert_close(cam(x, ClassScore([2, 4])).raw, cam(x, [2, 4]).raw)
    top1 = cam(x, ClassScore())
    torch.testing.assert_close(top1.raw, cam(x).raw)


def test_k_classes_per_image_equal_single_calls(net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    classes = torch.tensor([[0, 3], [4, 1]])
    multi = cam(x, ClassScore(classes, kind="probability"))
    assert multi.heatmap.shape[:2] == (2, 2)
    for j in range(2):
        single = cam(x, ClassScore(classes[:, j], kind="probability"))
        # vmapped against single backward passes: a softmax over 5 classes, fc's 5-term backward, 16 cells, 6 channels
        raw_atol = sum_atol(16, cam_magnitude(single.weights, layer_output(net, "act", x)), depth=4)
        torch.testing.assert_close(multi.raw[:, j], single.raw, rtol=0, atol=raw_atol)


def test_weighted_classes_equal_autograd_and_linearity(net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    e = cam(x, WeightedClasses({1: 0.5, 3: -2.0}))
    ref = autograd_reference(net, "act", x, lambda out: 0.5 * out[:, 1] - 2.0 * out[:, 3])
    assert_weights_close(e.weights, ref)
    # Grad-CAM's alpha is linear in y: alpha(0.5 y1 - 2 y3) = 0.5 alpha(y1) - 2 alpha(y3)
    linear = 0.5 * cam(x, 1).weights - 2.0 * cam(x, 3).weights
    assert_weights_close(linear, ref)
    per_image = torch.zeros(2, 5)
    per_image[0, 2], per_image[1, 4] = 1.0, 3.0
    e2 = cam(x, WeightedClasses(per_image, kind="sigmoid"))
    ref2 = autograd_reference(net, "act", x, lambda out: torch.stack([out[0, 2].sigmoid(), 3 * out[1, 4].sigmoid()]))
    assert_weights_close(e2.weights, ref2)


def test_composed_targets(net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    combined = cam(x, ClassScore(1) - 0.5 * ClassScore(2, kind="probability"))
    ref = autograd_reference(net, "act", x, lambda out: out[:, 1] - 0.5 * manual_kind(out, "probability")[:, 2])
    assert_weights_close(combined.weights, ref)
    stacked = cam(x, Stack(ClassScore(1), -ClassScore(2), sum([ClassScore(0), ClassScore(4)])))
    assert stacked.scores.shape == (2, 3)
    torch.testing.assert_close(stacked.weights[:, 0], cam(x, 1).weights)
    torch.testing.assert_close(stacked.weights[:, 1], -cam(x, 2).weights)
    summed = autograd_reference(net, "act", x, lambda out: out[:, 0] + out[:, 4])
    assert_weights_close(stacked.weights[:, 2], summed)
    assert_weights_close(cam(x, 0).weights + cam(x, 4).weights, summed)
    with pytest.raises(gradcam.TargetError, match="equal shapes"):
        cam(x, ClassScore(1) + ClassScore(torch.tensor([[1, 2], [3, 4]])))


def test_class_target_errors(net):
    x = torch.randn(2, 3, 8, 8)
    cam = gradcam.GradCAM(net, "act")
    with pytest.raises(gradcam.TargetError, match="class 7 is out of range for 5 classes"):
        cam(x, ClassScore(7))
    with pytest.raises(gradcam.TargetError, match="classes must be an int, B=2 ints"):
        cam(x, ClassScore([1, 2, 3]))
    with pytest.raises(gradcam.TargetError, match="kind must be one of"):
        ClassScore(1, kind="softmax")
    with pytest.raises(gradcam.TargetError, match="weights of shape"):
        cam(x, WeightedClasses(torch.ones(4)))


# ---------------------------------------------------------------------------------------------- segmentation


def test_segmentation_one_pixel_mask_hand_worked():
    # pixel (3, 0) lies in cell (1, 0); class 1: y = -A0[1,0] + 2 A1[1,0] = -3 A0[1,0] = -9.
    # dy/dA0 = -1, dy/dA1 = 2 at that cell: alpha = (-1/4, 2/4); L = ReLU(-A0/4 + A1/2) = ReLU(-3/4 A0).
    model = HandSegmenter().eval()
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[3, 0] = True
    e = gradcam.GradCAM(model, "features")(block_image(BLOCKS), SegmentationScore(1, mask))
    torch.testing.assert_close(e.weights, torch.tensor([[-0.25, 0.5]]))
    torch.testing.assert_close(e.scores, torch.tensor([-9.0]))
    torch.testing.assert_close(e.raw, torch.tensor([[[0.0, 0.0], [0.0, 3.0]]]))


def test_segmentation_predicted_mask_hand_worked():
    # class 0 logits = A0 + A1/2 = A0/2; class 1 = -A0 + 2 A1 = -3 A0. Class 0 wins where A0 > 0:
    # cells (0,0), (0,1), (1,0), 4 pixels each. y = 4 * (1 + 2 + 3) / 2 = 12; dy/dA0 = 4 * 1 and
    # dy/dA1 = 4 * 0.5 on those 3 of the 4 cells: alpha0 = 12 / 4 = 3, alpha1 = 6 / 4 = 1.5.
    model = HandSegmenter().eval()
    e = gradcam.GradCAM(model, "features")(block_image(BLOCKS), SegmentationScore(0))
    torch.testing.assert_close(e.scores, torch.tensor([12.0]))
    torch.testing.assert_close(e.weights, torch.tensor([[3.0, 1.5]]))


def test_segmentation_batches_and_k_categories_equal_autograd():
    model = HandSegmenter().eval()
    x = torch.cat([block_image(BLOCKS), block_image([[-1.0, 0.5], [2.0, 1.0]])])
    masks = torch.rand(2, 4, 4)
    categories = torch.tensor([[0, 1], [1, 0]])
    e = gradcam.GradCAM(model, "features")(x, SegmentationScore(categories, masks))

    def manual(out):
        logits = out["out"]
        return torch.stack(
            [torch.stack([(logits[b, categories[b, j]] * masks[b]).sum() for j in range(2)]) for b in range(2)]
        )

    ref = autograd_reference(model, "features", x, manual)
    assert_weights_close(e.weights, ref)
    torch.testing.assert_close(e.scores, ref.scores)


def test_segmentation_errors():
    model = HandSegmenter().eval()
    cam = gradcam.GradCAM(model, "features")
    with pytest.raises(gradcam.TargetError, match=r"mask has shape \(8, 8\) but the logits are 4x4"):
        cam(block_image(BLOCKS), SegmentationScore(0, torch.ones(8, 8)))
    with pytest.raises(gradcam.TargetError, match="category 2 is out of range"):
        cam(block_image(BLOCKS), SegmentationScore(2))


# ---------------------------------------------------------------------------------------------- detection


def test_detection_one_box_hand_worked():
    # Reference R = (0, 0, 4, 2): det 0 = (0, 0, 3, 2) lies inside it, IoU = x1 / 4 = 0.75; det 1 has IoU 0.
    # y = A0[0,0] + IoU, dIoU/dx1 = 1/4, dx1/dA0[0,1] = 1/2: dy/dA0 = [[1, 1/8], [0, 0]], dy/dA1 = 0.
    # alpha0 = 1.125 / 4 = 0.28125; L = ReLU(0.28125 A0).
    model = HandDetector().eval()
    e = gradcam.GradCAM(model, "features")(block_image(BLOCKS), DetectionScore(box=(0, 0, 4, 2), box_weight=1.0))
    torch.testing.assert_close(e.weights, torch.tensor([[0.28125, 0.0]]))
    torch.testing.assert_close(e.scores, torch.tensor([1.75]))
    torch.testing.assert_close(e.raw, 0.28125 * torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
    score_only = gradcam.GradCAM(model, "features")(block_image(BLOCKS), DetectionScore(box=(0, 0, 4, 2)))
    torch.testing.assert_close(score_only.weights, torch.tensor([[0.25, 0.0]]))


def test_detection_by_index_hand_worked():
    # det 1: y = A1[1,1] = 4, alpha1 = 1/4; L = ReLU(A1 / 4) = [[0, 0], [0, 1]].
    model = HandDetector().eval()
    e = gradcam.GradCAM(model, "features")(block_image(BLOCKS), DetectionScore(index=1))
    torch.testing.assert_close(e.weights, torch.tensor([[0.0, 0.25]]))
    torch.testing.assert_close(e.raw, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_detection_batch_and_k_boxes_equal_autograd():
    model = HandDetector().eval()
    x = torch.cat([block_image(BLOCKS), block_image([[2.0, 1.0], [0.5, -1.0]])])
    boxes = torch.tensor([[[0, 0, 4, 2], [2, 2, 4, 4]], [[2, 2, 4, 3], [0, 0, 3, 2]]], dtype=torch.float32)
    target = DetectionScore(box=boxes, box_weight=2.0)
    e = gradcam.GradCAM(model, "features")(x, target)
    with torch.no_grad():
        indices, _ = match_detections(model(x), boxes)
    assert indices.tolist() == [[0, 1], [1, 0]]

    def manual(out):
        rows = []
        for b in range(2):
            row = []
            for j in range(2):
                d = int(indices[b, j])
                box, ref = out[b]["boxes"][d], boxes[b, j]
                w = (torch.min(box[2], ref[2]) - torch.max(box[0], ref[0])).clamp(min=0)
                h = (torch.min(box[3], ref[3]) - torch.max(box[1], ref[1])).clamp(min=0)
                inter = w * h
                union = (box[2] - box[0]) * (box[3] - box[1]) + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter
                row.append(out[b]["scores"][d] + 2.0 * inter / union)
            rows.append(torch.stack(row))
        return torch.stack(rows)

    ref = autograd_reference(model, "features", x, manual)
    assert_weights_close(e.weights, ref)
    torch.testing.assert_close(e.scores, ref.scores)


def test_detection_errors_name_the_problem():
    model = HandDetector().eval()
    cam = gradcam.GradCAM(model, "features")
    with pytest.raises(gradcam.TargetError, match=r"image 0: no detection of label 2 overlaps box"):
        cam(block_image(BLOCKS), DetectionScore(box=(0, 0, 4, 2), label=2))
    with pytest.raises(gradcam.TargetError, match="image 0 has 2 detections; index"):
        cam(block_image(BLOCKS), DetectionScore(index=5))
    with pytest.raises(gradcam.TargetError, match="box_weight needs a reference box"):
        DetectionScore(index=0, box_weight=1.0)
    with pytest.raises(gradcam.TargetError, match="x1 > x0"):
        DetectionScore(box=(4, 0, 2, 2))
    with pytest.raises(gradcam.TargetError, match="list of B dicts"):
        gradcam.GradCAM(HandSegmenter().eval(), "features")(block_image(BLOCKS), DetectionScore())


# ---------------------------------------------------------------------------------------------- similarity


def test_embedding_similarity_equals_autograd(net):
    x = torch.randn(2, 3, 8, 8)
    references = torch.randn(3, 5)
    e = gradcam.GradCAM(net, "act")(x, EmbeddingSimilarity(references))

    def manual(out):
        return (out @ references.T) / (out.norm(dim=1, keepdim=True) * references.norm(dim=1))

    ref = autograd_reference(net, "act", x, manual)
    assert e.scores.shape == (2, 3)
    assert_weights_close(e.weights, ref, depth=6)  # the cosine's dot product, norm and quotient: 3 steps, not 1
    torch.testing.assert_close(e.scores, ref.scores)


def test_image_image_similarity_per_image(net):
    x, other = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    reference = embed(net, other)
    torch.testing.assert_close(reference, net(other))
    e = gradcam.GradCAM(net, "act")(x, EmbeddingSimilarity(reference, per_image=True))
    ref = autograd_reference(
        net, "act", x, lambda out: (out * reference).sum(1) / (out.norm(dim=1) * reference.norm(dim=1))
    )
    assert_weights_close(e.weights, ref, depth=6)  # the cosine's dot product, norm and quotient: 3 steps, not 1
    torch.testing.assert_close(e.scores, ref.scores)
    # an image compared with itself has similarity 1
    self_sim = gradcam.GradCAM(net, "act")(other, EmbeddingSimilarity(reference, per_image=True))
    torch.testing.assert_close(self_sim.scores, torch.ones(2))
    with pytest.raises(gradcam.TargetError, match="dimension 4 but the image embedding has 5"):
        gradcam.GradCAM(net, "act")(x, EmbeddingSimilarity(torch.randn(4)))


# ---------------------------------------------------------------------------------------------- sequences


@pytest.fixture
def captioner() -> TinyCaptioner:
    torch.manual_seed(4)
    return TinyCaptioner().eval()


def manual_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.exp().sum(-1, keepdim=True).log()


def test_token_log_probability_equals_autograd(captioner):
    x = torch.randn(2, 3, 8, 8)
    ids = torch.tensor([[1, 4, 2, 6], [3, 3, 0, 5]])
    kwargs = {"input_ids": ids}
    target = TokenLogProbability(token=ids[:, 2], position=1)
    e = gradcam.GradCAM(captioner, "body")(x, target, forward_kwargs=kwargs)
    ref = autograd_reference(
        captioner, "body", x, lambda out: manual_log_softmax(out["logits"][:, 1])[torch.arange(2), ids[:, 2]], kwargs
    )
    assert_weights_close(e.weights, ref)
    torch.testing.assert_close(e.scores, ref.scores)


def test_sequence_log_probability_and_per_token_maps(captioner):
    x = torch.randn(2, 3, 8, 8)
    ids = torch.tensor([[1, 4, 2, 6], [3, 3, 0, 5]])
    kwargs = {"input_ids": ids}
    cam = gradcam.GradCAM(captioner, "body")
    whole = cam(x, SequenceLogProbability(ids), forward_kwargs=kwargs)

    def manual(out):
        logp = manual_log_softmax(out["logits"])
        return sum(logp[torch.arange(2), t - 1, ids[:, t]] for t in range(1, 4))

    ref = autograd_reference(captioner, "body", x, manual, kwargs)
    y = ref.scores
    assert_weights_close(whole.weights, ref)
    torch.testing.assert_close(whole.scores, y)
    per_token = cam(x, SequenceLogProbability(ids, per_token=True), forward_kwargs=kwargs)
    assert per_token.scores.shape == (2, 3)
    for j in range(3):
        single = cam(x, TokenLogProbability(ids[:, j + 1], position=j), forward_kwargs=kwargs)
        token = autograd_reference(captioner, "body", x, lambda out, j=j: manual_log_softmax(out["logits"])[
            torch.arange(2), j, ids[:, j + 1]], kwargs)  # fmt: skip
        assert_weights_close(per_token.weights[:, j], token)
        assert_weights_close(single.weights, token)
    # the answer's score after a 2-token question: tokens 2 and 3 only
    answer = cam(x, answer_score(ids, question_length=2), forward_kwargs=kwargs)
    torch.testing.assert_close(answer.scores, per_token.scores[:, 1:].sum(1))
    masked = cam(x, SequenceLogProbability(ids, mask=torch.tensor([1, 1, 0, 1])), forward_kwargs=kwargs)
    torch.testing.assert_close(masked.scores, per_token.scores[:, 0] + per_token.scores[:, 2])
    unshifted = cam(x, SequenceLogProbability(ids[:, 1:], shift=False, start=0), forward_kwargs=kwargs)
    torch.testing.assert_close(unshifted.scores, y)  # labels-aligned tokens against the same logits


def test_sequence_errors(captioner):
    x = torch.randn(1, 3, 8, 8)
    kwargs = {"input_ids": torch.tensor([[1, 2, 3]])}
    cam = gradcam.GradCAM(captioner, "body")
    with pytest.raises(gradcam.TargetError, match="position 3 is out of range"):
        cam(x, TokenLogProbability(1, position=3), forward_kwargs=kwargs)
    with pytest.raises(gradcam.TargetError, match="token 9 is out of range for 7 vocabulary entries"):
        cam(x, TokenLogProbability(9, position=0), forward_kwargs=kwargs)
    with pytest.raises(gradcam.TargetError, match="do not fit logits of length 3"):
        cam(x, SequenceLogProbability([1, 2, 3, 4, 5]), forward_kwargs=kwargs)


# ---------------------------------------------------------------------------------------------- output selection


def test_missing_output_key_lists_the_keys():
    model = HandSegmenter().eval()
    with pytest.raises(gradcam.TargetError, match=r"has none of \['logits'\]: it is a dict with keys \['out'\]"):
        gradcam.GradCAM(model, "features")(block_image(BLOCKS), ClassScore(0))


# ---------------------------------------------------------------------------------------------- rescoring copies


def rescoring_cases():
    torch.manual_seed(5)
    net = GapNet(inplace=False).eval()
    x = torch.randn(3, 3, 8, 8)
    blocks = torch.cat([block_image(BLOCKS), block_image([[2.0, 1.0], [0.5, -1.0]]), block_image([[1, 1], [1, 1]])])
    ids = torch.tensor([[1, 4, 2, 6], [3, 3, 0, 5], [2, 2, 1, 1]])
    captioner = TinyCaptioner().eval()
    return [
        (net, x, ClassScore([1, 3, 0], kind="probability"), None),
        (net, x, ClassScore([0, 2, 4]) - WeightedClasses(torch.rand(3, 5)), None),
        (net, x, Stack(EmbeddingSimilarity(torch.randn(3, 5), per_image=True), ClassScore(2)), None),
        (HandSegmenter().eval(), blocks, SegmentationScore([0, 1, 1], torch.rand(3, 4, 4)), None),
        (HandDetector().eval(), blocks, DetectionScore(index=[0, 1, 0]), None),
        (HandDetector().eval(), blocks, DetectionScore(box=torch.tensor([[0, 0, 4, 2], [2, 2, 4, 4], [0, 0, 3, 2.]])),
         None),
        (captioner, x, TokenLogProbability(ids[:, 2], position=torch.tensor([1, 0, 2])), {"input_ids": ids}),
        (captioner, x, SequenceLogProbability(ids, mask=torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [1, 0, 1, 1]])),
         {"input_ids": ids}),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(8))
def test_for_image_rescores_copies_of_one_image(case):
    # What perturbation methods need: the target of image b, applied to N copies of image b alone.
    model, x, target, kwargs = rescoring_cases()[case]
    with torch.no_grad():
        full = target(model(x, **(kwargs or {})))
        for b in range(3):
            copies = x[b : b + 1].expand(4, *x.shape[1:])
            copy_kwargs = {k: v[b : b + 1].expand(4, *v.shape[1:]) for k, v in (kwargs or {}).items()}
            scores = target.for_image(b, 4)(model(copies, **copy_kwargs))
            torch.testing.assert_close(scores, full[b : b + 1].expand_as(scores))
