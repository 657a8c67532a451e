"""PASCAL-VOC / ILSVRC annotations: parsing, the box convention, synset mapping, folder pairing."""

from __future__ import annotations

import pytest
from PIL import Image

from gradcam.evaluation.datasets import (
    AnnotatedImage,
    load_annotated_folder,
    read_voc_xml,
    voc_xml,
    write_annotated_folder,
)
from gradcam.models import imagenet_synsets

# The layout of an ILSVRC-2012 validation annotation (values made up).
ILSVRC_XML = """<annotation>
  <folder>val</folder>
  <filename>ILSVRC2012_val_00000001</filename>
  <source><database>ILSVRC_2012</database></source>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <segmented>0</segmented>
  <object>
    <name>n01751748</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>111</xmin><ymin>108</ymin><xmax>441</xmax><ymax>299</ymax></bndbox>
  </object>
  <object>
    <name>n01751748</name><difficult>1</difficult>
    <bndbox><xmin>0</xmin><ymin>0</ymin><xmax>9</xmax><ymax>19</ymax></bndbox>
  </object>
</annotation>
"""


def test_read_ilsvrc_annotation_box_convention(tmp_path):
    path = tmp_path / "ILSVRC2012_val_00000001.xml"
    path.write_text(ILSVRC_XML)
    annotation = read_voc_xml(path)
    assert annotation.filename == "ILSVRC2012_val_00000001" and annotation.size == (500, 375)
    first, second = annotation.objects
    assert first.name == "n01751748" and not first.difficult
    assert first.box == (111.0, 108.0, 442.0, 300.0)  # inclusive indices -> exclusive continuous box
    assert second.box == (0.0, 0.0, 10.0, 20.0) and second.difficult  # 10 x 20 pixels, as the devkit counts
    assert read_voc_xml(path, origin=1).objects[0].box == (110.0, 107.0, 441.0, 299.0)


def test_voc_xml_round_trip(tmp_path):
    text = voc_xml("a.png", (64, 48), [("disc", (3, 4, 20, 30)), ("ring", (0, 0, 64, 48))])
    path = tmp_path / "a.xml"
    path.write_text(text)
    annotation = read_voc_xml(path)
    assert [(o.name, o.box) for o in annotation.objects] == [("disc", (3, 4, 20, 30)), ("ring", (0, 0, 64, 48))]
    assert annotation.size == (64, 48)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><object><name>x</name></object></annotation>", "has no <bndbox>"),
        ("<notes/>", "expected an <annotation> root"),
        ("<annotation><object><bndbox/></object>", "cannot read annotation"),
        (
            "<annotation><object><name>x</name><bndbox><xmin>5</xmin><ymin>0</ymin><xmax>2</xmax>"
            "<ymax>3</ymax></bndbox></object></annotation>",
            "inverted box",
        ),
    ],
)
def test_bad_annotations_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_voc_xml(path)
    assert "bad.xml" in str(info.value)


def make_imagenet_folder(root, with_annotations=True):
    """Three images in an images/ folder and their XML in a separate bbox/ folder, like ILSVRC val."""
    images, boxes = root / "val", root / "bbox"
    images.mkdir()
    boxes.mkdir()
    synsets = imagenet_synsets()
    specs = {"ILSVRC2012_val_00000001": (synsets[0], (40, 30)), "ILSVRC2012_val_00000002": (synsets[285], (30, 40))}
    for stem, (synset, size) in specs.items():
        Image.new("RGB", size, (120, 30, 200)).save(images / f"{stem}.JPEG")
        if with_annotations:
            (boxes / f"{stem}.xml").write_text(voc_xml(f"{stem}.JPEG", size, [(synset, (2, 3, 20, 25))]))
    Image.new("RGB", (8, 8)).save(images / "ILSVRC2012_val_00000003.JPEG")  # no annotation
    return images, boxes


def test_load_imagenet_folder_maps_synsets_to_ilsvrc_indices(tmp_path, caplog):
    images, boxes = make_imagenet_folder(tmp_path)
    items = load_annotated_folder(images, boxes)
    assert [item.path.name for item in items] == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    assert [item.objects for item in items] == [((0, (2, 3, 20, 25)),), ((285, (2, 3, 20, 25)),)]
    assert "1 image(s)" in caplog.text and "no <stem>.xml" in caplog.text
    assert items[1].load().size == (30, 40)
    assert len(load_annotated_folder(images, boxes, limit=1)) == 1


def test_load_folder_errors(tmp_path):
    images, boxes = make_imagenet_folder(tmp_path)
    (boxes / "ILSVRC2012_val_00000001.xml").write_text(voc_xml("x", (40, 30), [("n99999999", (0, 0, 2, 2))]))
    with pytest.raises(ValueError, match="n99999999.*not a class"):
        load_annotated_folder(images, boxes)
    with pytest.raises(ValueError, match="no .xml annotations"):
        load_annotated_folder(images, tmp_path / "val")
    with pytest.raises(ValueError, match="not a folder"):
        load_annotated_folder(images, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_annotated_folder(empty)


def test_labels_by_name_and_boxes_scaled_to_the_file_size(tmp_path):
    item = AnnotatedImage(
        "a", ((1, (10.0, 20.0, 30.0, 40.0)),), image=Image.new("RGB", (50, 100)), annotated_size=(100, 200)
    )
    assert item.objects_for((50, 100)) == ((1, (5.0, 10.0, 15.0, 20.0)),)
    assert item.objects_for((100, 200)) == item.objects
    written = write_annotated_folder([item], tmp_path, ["disc", "ring"])
    assert [p.name for p in written] == ["a.png"]
    (loaded,) = load_annotated_folder(tmp_path, labels=["disc", "ring"])
    assert loaded.objects == ((1, (5.0, 10.0, 15.0, 20.0)),) and loaded.annotated_size == (50, 100)
