"""Tests for gradcam.imaging.io: robust loading, file discovery and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.imaging import io as image_io
from gradcam.imaging.geometry import image_pixels
from gradcam.imaging.io import (
    ImageReadError,
    find_images,
    load_image,
    read_pixels,
    save_npy_atomic,
    save_png_atomic,
    write_bytes_atomic,
    write_json_atomic,
)

EXIF_ORIENTATION_TAG = 0x0112


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8), "L").save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (2, 2, 3)
    assert pixels[0, 1].tolist() == [77, 77, 77]
    assert pixels[1, 0].tolist() == [200, 200, 200]


def test_bilevel_image_maps_to_0_and_255(tmp_path: Path) -> None:
    path = tmp_path / "bilevel.png"
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8), "L").convert("1").save(path)
    assert np.asarray(load_image(path))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.zeros((1, 3, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 128)  # half-transparent red: g = b = 255 * 127 / 255 = 127
    pixels[0, 1] = (10, 20, 30, 0)  # fully transparent -> white
    pixels[0, 2] = (10, 20, 30, 255)  # opaque -> unchanged
    Image.fromarray(pixels, "RGBA").save(path)
    rgb = np.asarray(load_image(path))
    assert rgb[0].tolist() == [[255, 127, 127], [255, 255, 255], [10, 20, 30]]


def test_la_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 51]]], dtype=np.uint8), "LA").save(path)
    # 0 * 51 + 255 * 204 = 52020 -> /255 = 204
    assert np.asarray(load_image(path))[0, 0].tolist() == [204, 204, 204]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    image.putpalette(palette)
    opaque_path, transparent_path = tmp_path / "p.png", tmp_path / "p_t.png"
    image.save(opaque_path)
    image.save(transparent_path, transparency=1)  # index 1 (blue) fully transparent
    assert np.asarray(load_image(opaque_path))[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    assert np.asarray(load_image(transparent_path))[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_16_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    gray = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert gray[0] == 0
    assert abs(gray[1] - 128) <= 1
    assert gray[2] == 255
    assert gray[3] == 1


def test_32_bit_int_within_16_bit_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I").save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 255]


def test_float_image_in_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_loads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 0, 0]


def _asymmetric_image() -> Image.Image:
    """40 wide x 20 tall, red top-left corner block, the rest blue."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :, 2] = 255
    pixels[:5, :5] = (255, 0, 0)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_rotates_clockwise(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rotated{suffix}"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6  # stored image must be rotated 90 degrees clockwise for display
    _asymmetric_image().save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))
    loaded = load_image(path)
    assert loaded.size == (20, 40)  # width and height swapped
    pixels = np.asarray(loaded).astype(int)
    # Clockwise rotation moves the top-left corner to the top-right corner.
    assert np.abs(pixels[1, 18] - (255, 0, 0)).max() <= 40
    assert np.abs(pixels[1, 1] - (0, 0, 255)).max() <= 40
    assert np.abs(pixels[38, 1] - (0, 0, 255)).max() <= 40


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert caught.value.path == path
    assert "cut.jpg" in str(caught.value)
    assert "truncated" in str(caught.value).lower()


def test_text_file_named_jpg_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("definitely not a JPEG\n")
    with pytest.raises(ImageReadError, match="notes.jpg.*not an image"):
        load_image(path)


def test_missing_and_empty_files_raise_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png.*empty"):
        load_image(tmp_path / "empty.png")


# ------------------------------------------------------------------ read_pixels: TorchCodec's JPEG path

XMP_ORIENTATION_6 = (
    b'<?xpacket begin=""?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _photo_like(width: int, height: int) -> Image.Image:
    """Smooth colour fields with edges: chroma subsampling and the IDCT both matter for these pixels."""
    rng = np.random.default_rng(width * 1000 + height)
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8))
    pixels = np.array(coarse.resize((width, height), Image.Resampling.BICUBIC))
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 30)  # a sharp red block
    return Image.fromarray(pixels)


def _jpeg_variants(folder: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, whether TorchCodec should decode it)."""
    photo = _photo_like(160, 120)
    variants: dict[str, tuple[dict, Image.Image, bool]] = {
        "420": ({"quality": 90}, photo, True),
        "444": ({"quality": 90, "subsampling": 0}, photo, True),
        "422": ({"quality": 90, "subsampling": 1}, photo, True),
        "progressive": ({"quality": 80, "progressive": True}, photo, True),
        "restart markers": ({"quality": 90, "restart_marker_blocks": 2}, photo, True),
        "odd size": ({"quality": 90}, _photo_like(61, 37), True),
        "gray": ({"quality": 90}, photo.convert("L"), True),
        "cmyk": ({"quality": 90}, photo.convert("CMYK"), False),
        "xmp orientation": ({"quality": 90, "xmp": XMP_ORIENTATION_6}, photo, False),
    }
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        variants[f"exif {orientation}"] = ({"quality": 90, "exif": exif.tobytes()}, photo, True)
    files = {}
    for name, (options, image, fast) in variants.items():
        path = folder / f"{name.replace(' ', '_')}.jpg"
        image.save(path, format="JPEG", **options)
        files[name] = (path, fast)
    return files


class _CountingDecoder:
    def __init__(self, decode) -> None:
        self.decode, self.calls = decode, 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.decode(*args, **kwargs)


def test_read_pixels_equals_load_image_for_every_jpeg_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchCodec's decode (when installed) gives PIL's pixels exactly, EXIF orientation included; CMYK
    and XMP orientation (which TorchCodec does not read) go through PIL."""
    decoder = image_io._jpeg_decoder()
    counting = _CountingDecoder(decoder) if decoder is not None else None
    monkeypatch.setattr(image_io, "_jpeg_decoder", lambda: counting)
    for name, (path, fast) in _jpeg_variants(tmp_path).items():
        calls = counting.calls if counting else 0
        pixels = read_pixels(path)
        expected = image_pixels(load_image(path))
        assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape, name
        assert torch.equal(pixels, expected), name
        if counting is not None:
            assert counting.calls - calls == int(fast), name
    rotated = read_pixels(tmp_path / "xmp_orientation.jpg")
    assert rotated.shape == (3, 160, 120)  # PIL turned it by XMP's orientation 6


def test_read_pixels_uses_torchcodec_when_installed() -> None:
    pytest.importorskip("torchcodec.decoders", reason="TorchCodec is the `decode` extra")
    image_io._jpeg_decoder.cache_clear()
    assert image_io._jpeg_decoder() is not None


def test_read_pixels_without_torchcodec_decodes_with_pil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "photo.jpg"
    _photo_like(64, 48).save(path, quality=90)
    expected = image_pixels(load_image(path))
    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", None)  # `import` now raises
    image_io._jpeg_decoder.cache_clear()
    try:
        assert image_io._jpeg_decoder() is None
        assert torch.equal(read_pixels(path), expected)
    finally:
        image_io._jpeg_decoder.cache_clear()


def test_a_torchcodec_that_does_not_load_is_reported_once(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    class Broken:
        def __getattr__(self, name: str):
            raise OSError("undefined symbol: _ZN3c10 (built for another torch)")

    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", Broken())
    image_io._jpeg_decoder.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="gradcam"):
            assert image_io._jpeg_decoder() is None
            assert image_io._jpeg_decoder() is None
        assert [r.getMessage() for r in caplog.records] == [
            "TorchCodec is installed but does not load (undefined symbol: _ZN3c10 (built for another torch)); "
            "decoding JPEGs with PIL"
        ]
    finally:
        image_io._jpeg_decoder.cache_clear()


def test_a_torchcodec_without_decode_jpeg_is_reported(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import types

    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", types.ModuleType("torchcodec.decoders"))
    image_io._jpeg_decoder.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="gradcam"):
            assert image_io._jpeg_decoder() is None
        assert "has no decode_jpeg (0.16 and newer have it)" in caplog.text
    finally:
        image_io._jpeg_decoder.cache_clear()


def test_read_pixels_reports_bad_jpegs_as_load_image_does(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    _photo_like(64, 64).save(good, quality=90)
    data = good.read_bytes()
    cases = {"cut.jpg": data[: len(data) // 2], "header.jpg": data[:120], "noise.jpg": data[:2] + bytes(range(256)) * 4}
    messages = {}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ImageReadError) as from_pil:
            load_image(path)
        with pytest.raises(ImageReadError) as from_fast:
            read_pixels(path)
        assert str(from_fast.value) == str(from_pil.value), name
        assert from_fast.value.path == path
        messages[name] = str(from_fast.value)
    assert "cut.jpg" in messages["cut.jpg"] and "truncated" in messages["cut.jpg"]


def test_read_pixels_keeps_pils_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    _photo_like(200, 100).save(path, quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 20000 pixels is over twice the limit
    with pytest.raises(ImageReadError, match="too large"):
        read_pixels(path)


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_find_images_walks_folders_globs_and_dedups(tmp_path: Path) -> None:
    a = _touch_image(tmp_path / "data" / "a.png")
    b = _touch_image(tmp_path / "data" / "sub" / "deep" / "B.JPG")
    _touch_image(tmp_path / "data" / ".hidden.png")
    (tmp_path / "data" / "readme.txt").write_text("x")
    odd = tmp_path / "other" / "scan.dat"
    odd.parent.mkdir()
    odd.write_bytes(b"named explicitly")
    c = _touch_image(tmp_path / "other" / "c.webp")

    found = find_images([tmp_path / "data", str(a), str(tmp_path / "other" / "*.webp"), odd])
    assert found == sorted({a.resolve(), b.resolve(), c.resolve(), odd.resolve()})

    assert find_images([tmp_path / "data"], recursive=False) == [a.resolve()]
    assert find_images([str(tmp_path / "**" / "*.JPG")]) == [b.resolve()]  # '**' crosses folders


def test_find_images_missing_path_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match=r"\*\.png"):
        find_images([str(tmp_path / "*.png")])


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_atomic_writers_replace_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "out.bin"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"

    json_path = tmp_path / "nested" / "result.json"
    write_json_atomic(json_path, {"z": 1, "a": [1.5, Path("x/y")], "arr": np.arange(3)})
    text = json_path.read_text()
    assert json.loads(text) == {"z": 1, "a": [1.5, "x/y"], "arr": [0, 1, 2]}
    assert text.index('"z"') < text.index('"a"')  # key order kept
    assert text.startswith('{\n  "z"')  # indent=2

    png_path = tmp_path / "nested" / "img.png"
    save_png_atomic(png_path, Image.new("RGB", (3, 2), (1, 2, 3)))
    with Image.open(png_path) as reloaded:
        assert reloaded.size == (3, 2) and reloaded.getpixel((2, 1)) == (1, 2, 3)

    npy_path = tmp_path / "nested" / "map.npy"
    save_npy_atomic(npy_path, np.array([[0.25, 0.5]], dtype=np.float32))
    assert np.load(npy_path).tolist() == [[0.25, 0.5]]
    assert _leftovers(tmp_path / "nested") == []


def test_failing_writer_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    npy_path = tmp_path / "map.npy"
    save_npy_atomic(npy_path, np.array([7.0]))
    with pytest.raises(ValueError):
        save_npy_atomic(npy_path, np.array([object()], dtype=object))  # pickling refused mid-write
    assert np.load(npy_path).tolist() == [7.0]

    json_path = tmp_path / "r.json"
    write_json_atomic(json_path, {"ok": True})
    with pytest.raises(ValueError):
        write_json_atomic(json_path, {"score": float("nan")})
    with pytest.raises(TypeError):
        write_json_atomic(json_path, {"bad": object()})
    assert json.loads(json_path.read_text()) == {"ok": True}
    assert _leftovers(tmp_path) == []


def test_save_png_atomic_keeps_other_modes_through_pil(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 2), (10, 20, 30, 40))
    save_png_atomic(tmp_path / "a.png", image)
    back = Image.open(tmp_path / "a.png")
    assert back.mode == "RGBA" and back.getpixel((2, 1)) == (10, 20, 30, 40)


def test_durable_writes_fsync_and_others_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_json_atomic(tmp_path / "durable.json", {"a": 1})
    assert len(synced) == 1
    write_json_atomic(tmp_path / "marker.json", {"a": 2}, durable=False)
    assert len(synced) == 1
    assert json.loads((tmp_path / "marker.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["durable.json", "marker.json"]  # no temp files left
    save_npy_atomic(tmp_path / "a.npy", np.arange(3.0), durable=False)
    save_png_atomic(tmp_path / "a.png", Image.new("RGB", (2, 2)), durable=False)
    assert len(synced) == 1
    save_npy_atomic(tmp_path / "b.npy", np.arange(3.0))
    save_png_atomic(tmp_path / "b.png", Image.new("RGB", (2, 2)))
    save_png_atomic(tmp_path / "c.png", Image.new("RGBA", (2, 2)))  # through PIL's encoder
    assert len(synced) == 4
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3.0))


def test_pngs_and_npys_are_pils_and_numpys_own_files(tmp_path: Path) -> None:
    """save_png_atomic is PIL's encoder (the same bytes as Image.save at that level, exact pixels) and
    save_npy_atomic np.save's bytes."""
    import io

    pixels = np.random.default_rng(0).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = io.BytesIO()
    image.save(expected, format="PNG", compress_level=1)
    save_png_atomic(tmp_path / "a.png", image)
    assert (tmp_path / "a.png").read_bytes() == expected.getvalue()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), pixels)
    array = np.random.default_rng(1).random((300, 500)).astype(np.float32)  # 600 kB
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    save_npy_atomic(tmp_path / "a.npy", array)
    assert (tmp_path / "a.npy").read_bytes() == buffer.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]
