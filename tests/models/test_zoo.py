"""The model zoo (like timm's test over every registered model): for every torchvision classification
builder, torchvision's segmentation / detection families, timm and tiny Hugging Face families, the automatic
layer (no layer, no reshape) is in the family's last stage and its raw map equals an independent float64
autograd Grad-CAM at that layer (tests/models/zoo_support.py).

CI runs every test: the zoo there is a core of one model per rule plus a rotating sample of the other light
models, drawn by date (``GRADCAM_ZOO_SEED`` fixes the draw), about a minute on one core. ``GRADCAM_FULL_ZOO=1``
runs every model (heavy ones too: ~25 min on one core); ``scripts/zoo_table.py`` runs the same checks and
writes docs/zoo.md.
"""

from __future__ import annotations

import datetime
import os
import random

import pytest

from models.zoo_support import check, zoo

FULL = os.environ.get("GRADCAM_FULL_ZOO") == "1"
SEED = int(os.environ.get("GRADCAM_ZOO_SEED", datetime.date.today().toordinal()))
SAMPLE = 10
# One model per rule of the automatic choice (and per hard case), always in CI.
CORE = {
    "torchvision:resnet18", "torchvision:densenet121", "torchvision:squeezenet1_1", "torchvision:swin_t",
    "torchvision:vit_b_16", "torchvision:deeplabv3_mobilenet_v3_large", "torchvision:r3d_18",
    "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision:ssdlite320_mobilenet_v3_large",
    "timm:vit_tiny_patch16_224", "timm:deit_tiny_distilled_patch16_224", "timm:vit_small_patch14_reg4_dinov2",
    "timm:swinv2_tiny_window8_256", "timm:mobilevit_xxs", "timm:eva02_tiny_patch14_224",
    "hf:ViTForImageClassification", "hf:DeiTForImageClassificationWithTeacher", "hf:SwinForImageClassification",
    "hf:Swinv2ForImageClassification", "hf:ConvNextForImageClassification", "hf:CLIPVisionModel",
    "hf:SegformerForSemanticSegmentation", "hf:Dinov2WithRegistersForImageClassification",
}  # fmt: skip

ENTRIES = zoo()
_light = sorted(e.id for e in ENTRIES if not e.heavy and e.id not in CORE)
TODAY = CORE | set(random.Random(SEED).sample(_light, min(SAMPLE, len(_light))))


def _param(entry):
    marks = [pytest.mark.slow] if entry.heavy else []
    return pytest.param(entry, id=entry.id, marks=marks)


@pytest.mark.parametrize("entry", [_param(e) for e in ENTRIES])
def test_automatic_layer_and_map(entry):
    if not FULL and entry.id not in TODAY:
        pytest.skip(f"not in today's zoo sample (seed {SEED}); GRADCAM_FULL_ZOO=1 runs every model")
    result = check(entry)
    assert result.status == "ok" or result.status.startswith("not supported")


def test_the_zoo_covers_every_torchvision_classifier_and_the_listed_families():
    import torchvision

    ids = {e.id for e in ENTRIES}
    assert {f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)} <= ids
    families = {e.family for e in ENTRIES}
    for family in ("torchvision segmentation", "torchvision detection", "torchvision video", "timm resnet",
                   "timm efficientnet", "timm convnext", "timm regnet", "timm vit", "timm deit", "timm swin",
                   "timm beit", "timm eva", "timm dinov2 (registers)", "timm mobilevit", "timm coatnet", "hf vit",
                   "hf deit", "hf swin", "hf convnext", "hf clip vision", "hf segformer"):  # fmt: skip
        assert family in families, family
    assert ids >= CORE
