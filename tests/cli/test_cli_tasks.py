"""`gradcam explain --task ...`: segmentation, detection and similarity targets end to end.

Every model is built here (random torchvision weights saved to tmp_path and passed with --weights, or a
hand-weighted factory model); nothing is downloaded. Each run is checked against hand-computed numbers
or against the library called directly on the same input with the same target.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import gradcam
from gradcam.batch.inputs import prepare_image
from gradcam.batch.outputs import BOX_COLOR, CONTOUR_COLOR
from gradcam.cli import main
from gradcam.imaging.io import load_image
from gradcam.models import load_model
from gradcam.targets import DetectionScore, EmbeddingSimilarity, SegmentationScore
from tolerances import assert_close, cam_magnitude, heatmap_atol, iou_rtol, layer_output, sum_atol, unit_roundoff

FAST = ["--quiet", "--workers", "0", "--writers", "0", "--method", "gradcam"]
DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
SEGMENTER = "torchvision:deeplabv3_mobilenet_v3_large"


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A smooth random colour image (blurred noise), saved losslessly."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR).save(path)
    return path


def expected_heatmap(explanation, geometry) -> np.ndarray:
    return geometry.to_original(explanation.heatmap[0].float()).numpy()


# -------------------------------------------------------------------------------------------- segmentation

HAND_SEGMENTER = '''
import torch
import torch.nn.functional as F
from torch import nn
from gradcam.models import LoadedModel
from gradcam.models import WholeImagePreprocess


class RedBlue(nn.Module):
    """A = avgpool8(R, B) (8x8 cells); logits: class 0 ('blue') = A_1, class 1 ('red') = A_0, nearest x8."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AvgPool2d(8))
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).reshape(2, 3, 1, 1))
            self.head.weight.copy_(torch.tensor([[0, 1.0], [1.0, 0]]).reshape(2, 2, 1, 1))

    def forward(self, x):
        return {"out": F.interpolate(self.head(self.features(x)), scale_factor=8, mode="nearest")}


def build():
    preprocess = WholeImagePreprocess(input_size=64, resize_size=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return LoadedModel(RedBlue(), "red-blue", preprocess, ["blue", "red"], "features", task="segmentation")
'''


def test_segmentation_map_covers_the_class_region_hand_worked(tmp_path, capsys):
    """Red left half, blue right half (W = 64 or 32, H = 48); y = the red logits summed over the red pixels.

    dy/dA_0 > 0 on the W/16 left cell columns only and dy/dA_1 = 0, so the map is ReLU(alpha_0 A_0):
    1 on the left cells, 0 on the right; bilinear upsampling x8 gives clip(W/16 + 0.5 - (x + 0.5) / 8, 0, 1).
    y = 48 rows x W/2 columns x 1.0. The two sizes share a batch (whole-image inputs of two shapes).
    """
    (tmp_path / "redblue.py").write_text(HAND_SEGMENTER)
    (tmp_path / "in").mkdir()
    for width in (64, 32):
        image = np.zeros((48, width, 3), dtype=np.uint8)
        image[:, : width // 2, 0] = 255
        image[:, width // 2 :, 2] = 255
        Image.fromarray(image).save(tmp_path / "in" / f"halves{width}.png")
    model = f"{tmp_path / 'redblue.py'}:build"
    for name, flip in (("red", False), ("blue", True)):
        out = tmp_path / name
        code, _, err = run(["explain", tmp_path / "in", "--model", model, "--class", name, "--out", out, *FAST],
                           capsys)  # fmt: skip
        assert code == 0, err
        data = manifest(out)
        assert data["task"] == "segmentation" and data["layer"] == "features"
        assert [Path(item["input"]).name for item in data["items"]] == ["halves32.png", "halves64.png"]
        for item, width in zip(data["items"], (32, 64)):
            assert item["task"] == {"name": "segmentation", "category": 1 - flip}
            assert item["predictions"] == [{"index": 0, "label": "blue", "score": 0.5},
                                           {"index": 1, "label": "red", "score": 0.5}]  # fmt: skip
            (output,) = item["outputs"]
            assert output["label"] == name and output["score"] == pytest.approx(48 * width / 2)
            assert output["pixels"] == 48 * width // 2
            columns = np.clip(width / 16 + 0.5 - (np.arange(width) + 0.5) / 8, 0, 1)
            expected = np.tile(columns[::-1] if flip else columns, (48, 1))
            # hand-worked ramps: bilinear taps (2 x 2, twice: to the input size and back) on exact values in [0, 1]
            assert_close(torch.from_numpy(np.load(output["heatmap"])), torch.from_numpy(expected), terms=4, depth=3)
            # the explained region's outline (2 px inside its border) is drawn in the contour colour
            overlay = np.asarray(Image.open(output["overlay"]))
            half = width // 2
            inner = slice(half, half + 2) if flip else slice(half - 2, half)
            assert (overlay[2:46, inner] == CONTOUR_COLOR).all()
            outside = half + 4 if not flip else half - 5
            assert not (overlay[2:46, outside] == CONTOUR_COLOR).all(axis=-1).any()


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True).eval()
    path = tmp_path_factory.mktemp("segmenter") / "deeplab.pth"
    torch.save(model.state_dict(), path)
    return path


def test_torchvision_segmentation_with_a_mask_equals_the_library(tmp_path, capsys, segmenter):
    image_path = photo(tmp_path / "scene.png", (64, 48))
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 20:50] = True
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "out"
    args = ["explain", image_path, "--model", SEGMENTER, "--weights", segmenter, "--class", "cat",
            "--mask", tmp_path / "mask.npy", "--out", out, *FAST]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    (item,) = manifest(out)["items"]
    (output,) = item["outputs"]
    assert item["task"] == {"name": "segmentation", "category": 8, "mask": str(tmp_path / "mask.npy")}
    assert output["label"] == "cat" and item["layer"] == "backbone.16"

    loaded = load_model(SEGMENTER, weights=segmenter)
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    assert tuple(x.shape) == (3, 520, 693)  # the weights' transforms: shorter side 520, no crop
    region = F.interpolate(torch.from_numpy(mask).float()[None, None], size=(520, 693), mode="bilinear",
                           align_corners=False)[0, 0]  # fmt: skip
    with torch.no_grad():
        logits = loaded.model(x[None])["out"]
    # the same logits, summed over 520 x 693 pixels in float32 in some order: within gamma_n sum |terms| of the
    # float64 sum (any order, worst case)
    terms = logits[0, 8].double() * region.double()
    score_atol = sum_atol(520 * 693, float(terms.abs().sum())) / 2  # one float32 sum against float64
    assert output["score"] == pytest.approx(float(terms.sum()), rel=0, abs=score_atol)
    e = gradcam.GradCAM(loaded.model, "backbone.16")(x[None], SegmentationScore(8, region))
    # the CLI builds its own region and backward (measured ~1e-6 apart): DeepLab's head after the layer sums at
    # most 960 * 3 * 3 = 8640 terms (ASPP's atrous convs), ~8 steps back to the layer; then alpha and the
    # 960-channel sum; the heatmap from the upsampled span, resized to the original (2 x 2 taps in [0, 1])
    activations = layer_output(loaded.model, "backbone.16", x[None])
    raw_atol = sum_atol(8640, cam_magnitude(e.weights, activations), depth=10)
    atol = heatmap_atol(e.raw, (520, 693), raw_atol) + sum_atol(4, 1.0, depth=2)
    np.testing.assert_allclose(np.load(output["heatmap"]), expected_heatmap(e, geometry), rtol=0, atol=atol)
    shares = np.bincount(logits[0].argmax(0).flatten().numpy(), minlength=21) / (520 * 693)
    assert item["predictions"][0]["index"] == int(shares.argmax())
    # an exact count over an exact pixel count, divided in float32 then widened: one rounding each
    assert item["predictions"][0]["score"] == pytest.approx(shares.max(), rel=2 * unit_roundoff())
    overlay = np.asarray(Image.open(output["overlay"]))
    assert (overlay[10:30, 20:22] == CONTOUR_COLOR).all()  # the mask's left edge, 2 px wide


def test_fine_tuned_dense_weights_load_without_downloading(tmp_path, monkeypatch):
    """Another class count (and no auxiliary head) rebuilds the model; the builders' ImageNet backbone
    weights must not be fetched."""
    import torchvision

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    torch.manual_seed(0)
    segmenter = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save(segmenter.state_dict(), tmp_path / "seg3.pth")
    loaded = load_model(SEGMENTER, weights=tmp_path / "seg3.pth")
    assert loaded.task == "segmentation" and loaded.labels is None and loaded.default_layer == "backbone.16"
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)["out"], segmenter(x)["out"])
    detector = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save(detector.state_dict(), tmp_path / "det3.pth")
    loaded = load_model(DETECTOR, weights=tmp_path / "det3.pth")
    assert loaded.task == "detection" and loaded.labels is None
    assert loaded.model.detector.roi_heads.box_predictor.cls_score.out_features == 3


# ---------------------------------------------------------------------------------------------- detection


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """Random weights whose class-1 logit is raised, so that there are detections with varied scores."""
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 6.0
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
    path = tmp_path_factory.mktemp("detector") / "frcnn.pth"
    torch.save(model.state_dict(), path)
    return path


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_near(boxes: list[list[float]], width: int, height: int) -> tuple[int, list[float], float]:
    """The detection to aim ``--box`` at, a reference box a little off it, and its IoU margin over the others.

    The detector's random weights give many tied scores, so which boxes survive NMS differs between kernels;
    any set of detections works: the target is the one whose overlap with its own shifted box beats every
    other detection's by the widest margin, among boxes well inside the image with room for the label strip
    above them (so the outline checks below see only the box's outline).
    """
    def shifted(box: list[float]) -> list[float]:
        return [round(box[0] + 1.5, 3), round(box[1] - 1.0, 3), round(box[2] - 2.0, 3), round(box[3] + 0.5, 3)]

    def margin(i: int) -> float:
        overlaps = [iou(box, shifted(boxes[i])) for box in boxes]
        return overlaps[i] - max(o for j, o in enumerate(overlaps) if j != i)

    def well_inside(box: list[float]) -> bool:
        x0, y0, x1, y1 = box
        return x0 >= 4 and y0 >= 24 and x1 <= width - 4 and y1 <= height - 4 and min(x1 - x0, y1 - y0) >= 12

    inside = [i for i, box in enumerate(boxes) if well_inside(box)]
    assert inside, "no detection lies well inside the image: the constructed case needs one"
    wanted = max(inside, key=margin)
    return wanted, shifted(boxes[wanted]), margin(wanted)


def test_detection_box_picks_the_best_overlap_and_draws_it(tmp_path, capsys, detector):
    image_path = photo(tmp_path / "street.png", (160, 120), seed=1)
    loaded = load_model(DETECTOR, weights=detector)
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    assert tuple(x.shape) == (3, 120, 160) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():
        (found,) = loaded.model(x[None])
    boxes = found["boxes"].tolist()
    best, reference, margin = reference_near(boxes, 160, 120)
    overlaps = [iou(box, reference) for box in boxes]
    # the constructed case: the right detection wins by far more than any rounding of the IoU
    assert int(np.argmax(overlaps)) == best and margin > 0.1
    box_arg = ",".join(f"{v:.3f}" for v in reference)  # exact: reference has 3 decimals
    out = tmp_path / "out"
    args = ["explain", image_path, "--model", DETECTOR, "--weights", detector, "--box", box_arg,
            "--box-weight", "0.5", "--out", out, *FAST]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    data = manifest(out)
    assert data["task"] == "detection" and data["layer"] == "detector.backbone.body.16"
    (item,) = data["items"]
    (output,) = item["outputs"]
    assert output["target"] == best and output["label"] == "person"
    # the CLI's IoU is float32 arithmetic on the same coordinates
    rtol = iou_rtol(boxes[best], reference)
    assert output["iou"] == pytest.approx(overlaps[best], rel=rtol)
    # the same forward pass of the same model on the same input: the scores are the same floats
    assert output["detection_score"] == float(found["scores"][best])
    assert [p["score"] for p in item["predictions"]] == found["scores"][:5].tolist()
    assert output["score"] == pytest.approx(float(found["scores"][best]) + 0.5 * overlaps[best],
                                            rel=rtol + 2 * unit_roundoff())  # fmt: skip
    # the manifest writes boxes with 2 decimals
    np.testing.assert_allclose(output["box"], boxes[best], rtol=0, atol=0.005 + 4 * unit_roundoff() * 160)

    adapter = loaded.model
    reference_input = torch.tensor(geometry.box_from_original(tuple(float(v) for v in box_arg.split(","))))
    e = gradcam.GradCAM(adapter, adapter.default_layer, reshape=adapter.crop_padding)(
        x[None], DetectionScore(box=reference_input, box_weight=0.5)
    )
    # the CLI runs the same explainer on the same input: the same floats
    np.testing.assert_array_equal(np.load(output["heatmap"]), expected_heatmap(e, geometry))

    # the explained detection's box: a 2 px outline over pixels round(x0)..round(x1)-1 of the original image
    x0, y0, x1, y1 = (round(v) for v in output["box"])
    overlay = np.asarray(Image.open(output["overlay"]))
    for side in (overlay[y0:y1, x0 : x0 + 2], overlay[y0:y1, x1 - 2 : x1], overlay[y1 - 2 : y1, x0:x1]):
        assert (side == BOX_COLOR).all()
    assert not (overlay[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] == BOX_COLOR).all(axis=-1).any()


def test_detection_index_out_of_range_and_unmatched_box_skip_the_image(tmp_path, capsys, detector):
    image_path = photo(tmp_path / "street.png", (160, 120), seed=1)
    loaded = load_model(DETECTOR, weights=detector)
    x, _ = prepare_image(load_image(image_path), loaded.preprocess)
    with torch.no_grad():
        count = len(loaded.model(x[None])[0]["scores"])
    base = ["explain", image_path, "--model", DETECTOR, "--weights", detector, "--out", tmp_path / "out", *FAST]
    code, out, err = run([*base, "--detection", str(count)], capsys)
    assert code == 1 and "0 explained, 0 already done, 1 failed" in out
    assert (f"--detection {count} is out of range: the detector found {count} detections in this image "
            f"(valid: 0..{count - 1})") in err  # fmt: skip
    code, out, err = run([*base, "--box", "150,110,159,119", "--iou-threshold", "0.95"], capsys)
    assert code == 1 and "matches no detection with IoU >= 0.95" in err
    code, out, err = run([*base, "--detection", "1"], capsys)
    assert code == 0, err
    (item,) = manifest(tmp_path / "out")["items"]
    assert item["outputs"][0]["target"] == 1 and item["task"] == {"name": "detection", "detection": 1}


# --------------------------------------------------------------------------------------------- similarity

EMBEDDER = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6),
    )
"""


def test_similarity_with_an_embedding_file_equals_the_library(tmp_path, capsys):
    (tmp_path / "embedder.py").write_text(EMBEDDER)
    image_path = photo(tmp_path / "query.png", (80, 60), seed=2)
    references = np.random.default_rng(3).normal(size=(2, 6)).astype(np.float32)
    np.save(tmp_path / "refs.npy", references)
    model = f"{tmp_path / 'embedder.py'}:build"
    out = tmp_path / "out"
    args = ["explain", image_path, "--model", model, "--task", "similarity", "--embedding", tmp_path / "refs.npy",
            "--out", out, *FAST]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    data = manifest(out)
    (item,) = data["items"]
    assert [o["target"] for o in item["outputs"]] == [0, 1]
    assert [o["label"] for o in item["outputs"]] == ["reference 0", "reference 1"]

    loaded = load_model(model)
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    with torch.no_grad():
        embedding = loaded.model(x[None])[0].numpy()
    cosine = references @ embedding / (np.linalg.norm(references, axis=1) * np.linalg.norm(embedding))
    # cosines (at most 1) of 6-dim embeddings: a dot product and two norms of 6 terms, one quotient
    assert [o["score"] for o in item["outputs"]] == pytest.approx(cosine.tolist(), abs=sum_atol(6, 1.0, depth=3))
    assert item["predictions"][0]["index"] == int(cosine.argmax())
    e = gradcam.GradCAM(loaded.model, data["layer"])(x[None], EmbeddingSimilarity(torch.from_numpy(references)))
    for j, output in enumerate(item["outputs"]):
        expected = geometry.to_original(e.heatmap[0, j]).numpy()
        np.testing.assert_array_equal(np.load(output["heatmap"]), expected)  # the same explainer on the same input


def tiny_clip_folder(folder: Path) -> None:
    """A tiny CLIP with a word-level tokenizer ('<s> words </s>') and a processor config, saved locally."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "photo": 5, "of": 6, "cat": 7, "dog": 8}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    words.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 9, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    processor = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))


def test_similarity_with_text_prompts_on_a_local_clip(tmp_path, capsys):
    folder = tmp_path / "clip"
    tiny_clip_folder(folder)
    image_path = photo(tmp_path / "query.png", (80, 60), seed=5)
    prompts = ["a photo of a cat", "a photo of a dog"]
    out = tmp_path / "out"
    args = ["explain", image_path, "--model", f"hf:{folder}", "--text", prompts[0], "--text", prompts[1],
            "--out", out, *FAST]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    data = manifest(out)
    assert data["task"] == "similarity" and data["layer"] == "model.vision_model.encoder.layers.1.layer_norm1"
    (item,) = data["items"]
    assert item["task"] == {"name": "similarity", "texts": prompts}

    loaded = load_model(f"hf:{folder}")
    clip = loaded.model.model
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    assert tuple(x.shape) == (3, 32, 32) and geometry.resized_size == (42, 32)
    ids = torch.tensor([[1, 4, 5, 6, 4, 7, 2], [1, 4, 5, 6, 4, 8, 2]])  # '<s> a photo of a cat|dog </s>' by hand
    with torch.no_grad():
        text = clip.get_text_features(input_ids=ids)
        image = clip.get_image_features(pixel_values=x[None])
    text, image = (t if isinstance(t, torch.Tensor) else t.pooler_output for t in (text, image))
    cosine = F.cosine_similarity(image, text)
    # cosines (at most 1) of the same 8-dim embeddings: a dot product and two norms of 8 terms, one quotient
    assert [o["score"] for o in item["outputs"]] == pytest.approx(cosine.tolist(), abs=sum_atol(8, 1.0, depth=3))
    from gradcam.reshape import auto_reshape

    reshape = auto_reshape(loaded.model, data["layer"], x[None])
    e = gradcam.GradCAM(loaded.model, data["layer"], reshape=reshape)(x[None], EmbeddingSimilarity(text))
    for j, output in enumerate(item["outputs"]):
        # the CLI runs the same explainer on the same input: the same floats
        np.testing.assert_array_equal(np.load(output["heatmap"]), geometry.to_original(e.heatmap[0, j]).numpy())


def test_probability_task_equals_the_library(tmp_path, capsys):
    image_path = photo(tmp_path / "thing.png", (90, 70), seed=4)
    out = tmp_path / "out"
    code, _, err = run(["explain", image_path, "--task", "probability", "--target", "967", "--out", out, *FAST], capsys)
    assert code == 0, err
    (item,) = manifest(out)["items"]
    (output,) = item["outputs"]
    loaded = load_model("efficientnet_lite0")
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    with torch.no_grad():
        probabilities = loaded.model(x[None]).softmax(1)[0]
    # the same logits through a softmax over 1000 classes (its sum of exps in any order: gamma_1000 twice)
    softmax_rtol = sum_atol(1000, 1.0) + 4 * unit_roundoff()
    assert output["target"] == 967 and output["score"] == pytest.approx(float(probabilities[967]), rel=softmax_rtol)
    e = gradcam.GradCAM(loaded.model, "bn2")(x[None], gradcam.targets.ClassScore(967, kind="probability"))
    np.testing.assert_array_equal(np.load(output["heatmap"]), expected_heatmap(e, geometry))  # the same explainer


TINY_VIT = """
import torch
from torchvision.models import VisionTransformer
from gradcam.imaging.geometry import PreprocessConfig
from gradcam.models import LoadedModel


def build():
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=4)
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return LoadedModel(model, "tiny-vit", PreprocessConfig(input_size=32, resize_size=36), ["a", "b", "c", "d"])
"""


def test_token_models_get_their_block_norm_and_token_reshape(tmp_path, capsys):
    """A ViT without a default layer: the job explains the last block's first LayerNorm, tokens on a 4x4 grid."""
    (tmp_path / "vit.py").write_text(TINY_VIT)
    image_path = photo(tmp_path / "img.png", (48, 40), seed=6)
    out = tmp_path / "out"
    code, _, err = run(["explain", image_path, "--model", f"{tmp_path / 'vit.py'}:build", "--top-k", "2",
                        "--out", out, *FAST], capsys)  # fmt: skip
    assert code == 0, err
    data = manifest(out)
    assert data["layer"] == "encoder.layers.encoder_layer_1.ln_1"
    (item,) = data["items"]
    loaded = load_model(f"{tmp_path / 'vit.py'}:build")
    x, geometry = prepare_image(load_image(image_path), loaded.preprocess)
    classes = [o["target"] for o in item["outputs"]]
    with torch.no_grad():
        assert classes == loaded.model(x[None])[0].topk(2).indices.tolist()
    grid = gradcam.reshape.TokenGrid("tokens", (4, 4), 1)  # 32 / 8 patches a side, one class token
    e = gradcam.GradCAM(loaded.model, data["layer"], reshape=grid)(x[None], torch.tensor([classes]))
    assert float(e.raw.amax()) > 0
    for j, output in enumerate(item["outputs"]):
        # the same explainer on the same input and the same two targets: the same floats
        np.testing.assert_array_equal(np.load(output["heatmap"]), geometry.to_original(e.heatmap[0, j]).numpy())


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "segmentation"], "--task segmentation needs a class (--class INDEX or NAME)"),
        (["--task", "detection", "--box", "1,2,3"],
         "--box must be x0,y0,x1,y1 (4 numbers, original image pixels); got '1,2,3'"),
        (["--task", "detection", "--box", "5,2,3,8"], "--box must have x1 > x0 and y1 > y0; got '5,2,3,8'"),
        (["--task", "detection", "--box", "0,0,9,9", "--detection", "1"], "give --box or --detection, not both"),
        (["--task", "detection", "--box-weight", "1"], "--box-weight needs --box"),
        (["--task", "detection", "--box", "0,0,9,9", "--iou-threshold", "1.5"],
         "--iou-threshold must be in [0, 1]; got 1.5"),
        (["--task", "detection", "--detection", "-1"], "--detection must be >= 0"),
        (["--class", "3"], "--class applies to --task segmentation, not --task class; for classifiers use --target"),
        (["--box", "0,0,9,9"], "--box applies to --task detection, not --task class"),
        (["--task", "segmentation", "--class", "1", "--target", "3"],
         "--target applies to the class tasks (class, probability, log-probability, sigmoid), not --task "
         "segmentation (use --class)"),
        (["--task", "segmentation", "--class", "tabby", "--mask", "absent.npy"], "--mask file not found"),
        (["--task", "segmentation", "--class", "kitty"], "--class 'kitty': unknown class 'kitty'"),
        (["--task", "similarity"], "--task similarity needs a reference: --embedding FILE.npy, or --text"),
        (["--task", "similarity", "--embedding", "absent.npy"], "--embedding file not found: absent.npy"),
        (["--task", "similarity", "--text", "a cat"],
         "--text needs an image-text model with a text encoder; efficientnet_lite0 has none. Use a CLIP-style "
         "model saved on this machine: --model hf:FOLDER"),
    ],
)  # fmt: skip
def test_bad_task_options_give_clear_messages(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    image_path = photo(tmp_path / "img.png", (40, 30))
    code, _, err = run(["explain", image_path, "--out", tmp_path / "out", *FAST, *args], capsys)
    assert code == 2
    assert message in err


def test_hf_spec_without_a_local_checkpoint_says_what_to_provide(tmp_path, capsys):
    image_path = photo(tmp_path / "img.png", (40, 30))
    code, _, err = run(["explain", image_path, "--model", f"hf:{tmp_path / 'clip'}", "--text", "a cat",
                        "--out", tmp_path / "out", *FAST], capsys)  # fmt: skip
    assert code == 2
    assert f"no Hugging Face checkpoint in {tmp_path / 'clip'} (config.json not found)" in err
    assert "save_pretrained" in err
