"""Annotated images as ImageNet users have them: image files + PASCAL-VOC XML boxes.

ILSVRC's localization annotations are PASCAL-VOC XML files, one per image (same stem), whose
``<object><name>`` is a WordNet id (``n01751748``) and whose ``<bndbox>`` holds inclusive pixel indices
``xmin..xmax``, ``ymin..ymax`` (the devkit measures a width as ``xmax - xmin + 1``). Here a box becomes
continuous coordinates ``(xmin - o, ymin - o, xmax - o + 1, ymax - o + 1)`` with ``o = origin``: 0 for
ImageNet's 0-based indices (the default), 1 for PASCAL VOC's 1-based ones.

Object names are turned into class indices with :func:`gradcam.models.class_index`: WordNet ids through
the ILSVRC-2012 synset order (:func:`gradcam.models.imagenet_synsets`) or class names of the model's
labels (e.g. ``disc`` for the synthetic CNN).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imaging.io import find_images, save_png_atomic, write_bytes_atomic
from ..models import class_index

logger = logging.getLogger("gradcam")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class VOCObject:
    """One annotated object: its ``name`` (WordNet id or label), continuous ``box``, ``difficult`` flag."""

    name: str
    box: Box
    difficult: bool = False


@dataclass(frozen=True)
class VOCAnnotation:
    """A parsed annotation file: ``filename``, ``size`` (W, H) when given, and its objects."""

    filename: str | None
    size: tuple[int, int] | None
    objects: tuple[VOCObject, ...]


@dataclass(frozen=True)
class AnnotatedImage:
    """An image to evaluate on: where it is (``path``) or the image itself (``image``, for generated
    data), its objects as ``(class_index, box)`` in original pixels, and the size the boxes refer to."""

    name: str
    objects: tuple[tuple[int, Box], ...]
    path: Path | None = None
    image: Image.Image | None = None
    annotated_size: tuple[int, int] | None = None

    def load(self) -> Image.Image:
        """The RGB image (decoded with :func:`gradcam.imaging.load_image` when it is a file)."""
        if self.image is not None:
            return self.image.convert("RGB")
        from ..imaging.io import load_image

        return load_image(self.path)

    def objects_for(self, size: tuple[int, int]) -> tuple[tuple[int, Box], ...]:
        """The objects with boxes scaled to an image of ``size`` (W, H) when the annotation was made for
        another size (its ``<size>`` differs from the file's)."""
        if self.annotated_size is None or tuple(self.annotated_size) == tuple(size):
            return self.objects
        sx, sy = size[0] / self.annotated_size[0], size[1] / self.annotated_size[1]
        return tuple((c, (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)) for c, b in self.objects)


def _text(element: ET.Element, tag: str, source: str | os.PathLike[str]) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{source}: <{element.tag}> has no <{tag}>")
    return found.text.strip()


def read_voc_xml(path: str | os.PathLike[str], origin: int = 0) -> VOCAnnotation:
    """Parse one PASCAL-VOC / ILSVRC annotation file (see the module docstring for the box convention).

    Raises ValueError naming the file when it is not such an annotation.
    """
    if origin not in (0, 1):
        raise ValueError(f"origin must be 0 (ImageNet) or 1 (PASCAL VOC); got {origin!r}")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise ValueError(f"cannot read annotation {str(path)!r}: {error}") from error
    if root.tag != "annotation":
        raise ValueError(f"{path}: expected an <annotation> root element, found <{root.tag}>")
    filename = root.findtext("filename")
    size = None
    size_element = root.find("size")
    if size_element is not None and size_element.findtext("width") and size_element.findtext("height"):
        size = (int(float(_text(size_element, "width", path))), int(float(_text(size_element, "height", path))))
    objects = []
    for element in root.iter("object"):
        name = _text(element, "name", path)
        box_element = element.find("bndbox")
        if box_element is None:
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(_text(box_element, t, path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            raise ValueError(f"{path}: object {name!r} has a malformed <bndbox>: {error}") from None
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}: object {name!r} has an inverted box {(xmin, ymin, xmax, ymax)}")
        box = (xmin - origin, ymin - origin, xmax - origin + 1, ymax - origin + 1)
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append(VOCObject(name, box, difficult))
    return VOCAnnotation(filename.strip() if filename else None, size, tuple(objects))


def voc_xml(
    filename: str, size: tuple[int, int], objects: Sequence[tuple[str, Sequence[float]]], origin: int = 0
) -> str:
    """PASCAL-VOC XML text for integer continuous boxes (the inverse of :func:`read_voc_xml`)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size_element = ET.SubElement(root, "size")
    ET.SubElement(size_element, "width").text = str(size[0])
    ET.SubElement(size_element, "height").text = str(size[1])
    ET.SubElement(size_element, "depth").text = "3"
    for name, (x0, y0, x1, y1) in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = name
        ET.SubElement(element, "difficult").text = "0"
        box = ET.SubElement(element, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1 - 1), ("ymax", y1 - 1)):
            ET.SubElement(box, tag).text = str(round(value + origin))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def load_annotated_folder(
    images: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | None = None,
    labels: Sequence[str] | None = None,
    *,
    origin: int = 0,
    include_difficult: bool = True,
    limit: int | None = None,
) -> list[AnnotatedImage]:
    """Pair every image under ``images`` with ``<stem>.xml`` under ``annotations`` (default: the same
    folder; both searched recursively) and map object names to class indices (``labels``: the model's
    class names; None = ImageNet). Images without an annotation are skipped with a warning; an object
    name that is not a class raises ValueError naming the file."""
    image_paths = find_images([images])
    if not image_paths:
        raise ValueError(f"no images found under {images!s}")
    root = Path(annotations if annotations is not None else images)
    if not root.is_dir():
        raise ValueError(f"annotations must be a folder of PASCAL-VOC XML files; {root!s} is not a folder")
    by_stem: dict[str, Path] = {}
    for xml_path in sorted(root.rglob("*.xml")):
        by_stem.setdefault(xml_path.stem, xml_path)
    if not by_stem:
        raise ValueError(f"no .xml annotations found under {root!s}")
    found: list[AnnotatedImage] = []
    missing = 0
    for path in image_paths:
        xml_path = by_stem.get(path.stem)
        if xml_path is None:
            missing += 1
            continue
        annotation = read_voc_xml(xml_path, origin)
        objects = []
        for obj in annotation.objects:
            if obj.difficult and not include_difficult:
                continue
            try:
                index = class_index(obj.name, labels)
            except ValueError as error:
                raise ValueError(f"{xml_path}: object name {obj.name!r} is not a class of the model: {error}") from None
            objects.append((index, obj.box))
        if not objects:
            logger.warning("gradcam: %s has no usable object; skipped", xml_path)
            continue
        found.append(AnnotatedImage(str(path), tuple(objects), path=path, annotated_size=annotation.size))
        if limit is not None and len(found) >= limit:
            break
    if missing:
        logger.warning("gradcam: %d image(s) under %s have no <stem>.xml annotation; skipped", missing, images)
    if not found:
        raise ValueError(f"none of the {len(image_paths)} images under {images!s} has an annotation in {root!s}")
    return found


def write_annotated_folder(
    items: Iterable[AnnotatedImage], folder: str | os.PathLike[str], class_names: Sequence[str], origin: int = 0
) -> list[Path]:
    """Write images (PNG) and their PASCAL-VOC XML (object names from ``class_names``) into ``folder``:
    the format :func:`load_annotated_folder` reads, e.g. to run ``gradcam evaluate`` on generated data."""
    folder = Path(folder)
    written = []
    for item in items:
        image = item.load()
        stem = Path(item.name).stem
        image_path = save_png_atomic(folder / f"{stem}.png", image)
        objects = [(class_names[c], box) for c, box in item.objects_for(image.size)]
        text = voc_xml(image_path.name, image.size, objects, origin)
        write_bytes_atomic(folder / f"{stem}.xml", text.encode("utf-8"))
        written.append(image_path)
    return written
