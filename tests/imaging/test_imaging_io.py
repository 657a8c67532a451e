"""Tests for gradcam.imaging.io: robust loading, file discovery and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradcam.imaging.io import (
    ImageReadError,
    encode_png,
    find_images,
    load_image,
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


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (2, 1), (7, 5, 3), (3, 9), (61, 83, 3)])
def test_encode_png_round_trips_exact_pixels(shape: tuple[int, ...]) -> None:
    """PIL (an independent decoder) reads back exactly the pixels written, 'Up' filter wrap-around included."""
    import io

    pixels = np.random.default_rng(len(shape) * 10 + shape[0]).integers(0, 256, shape, dtype=np.uint8)
    pixels.reshape(shape[0], -1)[-1, :] = 0  # the Up filter's wrap-around: 0 - 255 mod 256
    pixels.reshape(shape[0], -1)[0, :] = 255
    data = encode_png(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # PIL checks every chunk's CRC
    assert decoded.mode == ("RGB" if len(shape) == 3 else "L")
    assert np.array_equal(np.asarray(decoded), pixels)


def test_encode_png_refuses_other_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


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
