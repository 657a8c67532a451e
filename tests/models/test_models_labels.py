"""ImageNet labels and synsets, and class lookup by index, name or synset."""

from __future__ import annotations

import pytest

from gradcam.models import class_index, imagenet_labels, imagenet_synsets


def test_label_files() -> None:
    labels, synsets = imagenet_labels(), imagenet_synsets()
    assert len(labels) == len(set(labels)) == 1000
    assert len(synsets) == len(set(synsets)) == 1000
    assert (labels[0], synsets[0]) == ("tench", "n01440764")
    assert (labels[281], synsets[281]) == ("tabby", "n02123045")
    assert (labels[999], synsets[999]) == ("toilet tissue", "n15075141")
    labels.append("x")  # callers get a copy
    assert len(imagenet_labels()) == 1000


def test_class_index_forms() -> None:
    assert class_index(281) == 281
    assert class_index("281") == 281
    assert class_index(" Tabby ") == 281
    assert class_index("n02123045") == 281
    assert class_index("military uniform") == 652
    assert class_index("b", ["a", "b"]) == 1


def test_class_index_errors() -> None:
    with pytest.raises(ValueError, match=r"did you mean: 'tiger cat' \(282\), 'Persian cat' \(283\)"):
        class_index("cat")
    with pytest.raises(ValueError, match=r"did you mean: 'espresso' \(967\)"):
        class_index("expresso")
    with pytest.raises(ValueError, match=r"class index 1000 out of range: the model has 1000 classes"):
        class_index(1000)
    with pytest.raises(ValueError, match="unknown ImageNet synset id 'n99999999'"):
        class_index("n99999999")
    with pytest.raises(ValueError, match="not ImageNet's 1000 classes"):
        class_index("n02123045", ["a", "b"])
