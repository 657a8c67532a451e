"""End-to-end runs of `gradcam explain` on the bundled photos, a two-object composite and bad files."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradcam
from gradcam.assets import sample_annotations, sample_path
from gradcam.batch.inputs import prepare_image
from gradcam.cli import main
from gradcam.imaging.draw import colormap
from gradcam.imaging.io import load_image
from gradcam.models import load_model
from tolerances import cam_magnitude, heatmap_atol, layer_output, sum_atol

FAST = ["--quiet", "--workers", "0"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def samples_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    code = main(["explain", "--samples", "--out", str(out), "--method", "gradcam", *FAST])
    return code, out, json.loads((out / "manifest.json").read_text())


def peak(path: str) -> tuple[int, int]:
    heatmap = np.load(path)
    y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
    return int(x), int(y)


def inside(point, box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def test_samples_top1_is_correct_and_the_peak_is_in_the_box(samples_run):
    code, _out, manifest = samples_run
    assert code == 0
    assert manifest["model"] == "efficientnet_lite0" and manifest["layer"] == "bn2"
    annotations = sample_annotations()
    assert len(manifest["items"]) == len(annotations)
    for item in manifest["items"]:
        truth = annotations[Path(item["input"]).name]
        assert item["predictions"][0]["index"] in truth["accepted_indices"], item["input"]
        assert item["predictions"][0]["probability"] > 0.3
        (output,) = item["outputs"]
        assert output["method"] == "gradcam" and output["target"] == item["predictions"][0]["index"]
        heatmap = np.load(output["heatmap"])
        width, height = truth["size"]
        assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        assert Image.open(output["overlay"]).size == (width, height)
        x0, y0, x1, y1 = truth["box"]
        if Path(item["input"]).name == "rocket.jpg":
            # The 29 px wide rocket is narrower than one cell of the 7x7 map, and 'missile' also lights
            # the left lightning tower: the map must still be far denser on the rocket than elsewhere.
            inside_mean = heatmap[y0:y1, x0:x1].mean()
            outside = np.ones_like(heatmap, dtype=bool)
            outside[y0:y1, x0:x1] = False
            assert inside_mean > 2.0 * heatmap[outside].mean()
        else:
            assert inside(peak(output["heatmap"]), truth["box"]), item["input"]


def make_composite(path: Path) -> tuple[int, int]:
    """Cat on the left half, espresso on the right half of a gray square (the centre crop keeps both)."""
    tile = 224
    canvas = Image.new("RGB", (2 * tile, 2 * tile), (128, 128, 128))
    for i, name in enumerate(["chelsea_cat", "coffee"]):
        image = Image.open(sample_path(name)).convert("RGB")
        scale = tile / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        canvas.paste(image, (i * tile + (tile - image.width) // 2, tile // 2 + (tile - image.height) // 2))
    canvas.save(path)
    return tile, 2 * tile


def test_maps_are_class_discriminative_on_a_composite(tmp_path, capsys):
    half, width = make_composite(tmp_path / "cat_and_coffee.png")
    args = ["explain", tmp_path / "cat_and_coffee.png", "--out", tmp_path / "out", *FAST]
    args += ["--target", "tiger cat", "--target", "espresso", "--method", "gradcam", "--method", "counterfactual"]
    code, _, _ = run(args, capsys)
    assert code == 0
    (item,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["items"]
    maps = {(o["method"], o["target"]): o["heatmap"] for o in item["outputs"]}
    assert set(maps) == {("gradcam", 282), ("gradcam", 967), ("counterfactual", 282), ("counterfactual", 967)}
    cat_x, _ = peak(maps["gradcam", 282])
    coffee_x, _ = peak(maps["gradcam", 967])
    assert cat_x < half <= coffee_x
    for cls, own in ((282, slice(0, half)), (967, slice(half, width))):
        heat, against = np.load(maps["gradcam", cls]), np.load(maps["counterfactual", cls])
        own_share = heat[:, own].sum() / heat.sum()
        assert own_share > 0.8, (cls, own_share)
        assert against[:, own].sum() / against.sum() < 0.2, cls  # counterfactual evidence lies elsewhere


def _write_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Valid images in awkward formats, with the original size each overlay must have."""
    folder.mkdir()
    rgb = Image.open(sample_path("coffee")).convert("RGB").resize((160, 100))
    rgb.convert("L").save(folder / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    sixteen = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rgb.save(folder / "rotated.jpg", exif=exif)
    return {"gray.png": (160, 100), "rgba.png": (160, 100), "palette.png": (160, 100),
            "sixteen.png": (160, 100), "rotated.jpg": (100, 160)}  # fmt: skip


def test_bad_files_are_reported_and_skipped_odd_formats_work(tmp_path, capsys):
    sizes = _write_odd_images(tmp_path / "in")
    data = io.BytesIO()
    Image.open(sample_path("coffee")).save(data, format="JPEG")
    (tmp_path / "in" / "truncated.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (tmp_path / "in" / "notes.jpg").write_text("not an image")
    code, out, err = run(["explain", tmp_path / "in", "--out", tmp_path / "out", "--method", "gradcam", *FAST], capsys)
    assert code == 1  # something failed
    assert "skipped: cannot read image" in err and "truncated.jpg" in err and "notes.jpg" in err
    assert "5 explained, 0 already done, 2 failed" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(Path(f["input"]).name for f in manifest["failed"]) == ["notes.jpg", "truncated.jpg"]
    for item in manifest["items"]:
        name = Path(item["input"]).name
        assert Image.open(item["outputs"][0]["overlay"]).size == sizes[name], name
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_rerun_resumes_and_overwrite_redoes(tmp_path, capsys):
    shutil.copy(sample_path("coffee"), tmp_path / "coffee.jpg")
    shutil.copy(sample_path("cameraman"), tmp_path / "cameraman.jpg")
    args = ["explain", tmp_path / "coffee.jpg", "--out", tmp_path / "out", "--method", "gradcam", *FAST]
    assert run(args, capsys)[0] == 0
    overlay = tmp_path / "out" / "coffee_jpg" / "gradcam_967_espresso.png"
    stamp = overlay.stat().st_mtime_ns
    args[1:2] = [tmp_path / "coffee.jpg", tmp_path / "cameraman.jpg"]
    code, out, _ = run(args, capsys)
    assert code == 0 and "1 explained, 1 already done, 0 failed" in out
    assert overlay.stat().st_mtime_ns == stamp
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [Path(i["input"]).name for i in manifest["items"]] == ["cameraman.jpg", "coffee.jpg"]
    code, out, _ = run([*args, "--overwrite"], capsys)
    assert "2 explained, 0 already done" in out and overlay.stat().st_mtime_ns != stamp
    code, out, _ = run([*args, "--top-k", "2"], capsys)  # other settings: redone, not reused
    assert "2 explained, 0 already done" in out


def test_top_k_gives_maps_for_the_k_best_classes(tmp_path, capsys):
    args = ["explain", sample_path("chelsea_cat"), "--out", tmp_path, "--top-k", "3", "--method", "gradcam", *FAST]
    assert run(args, capsys)[0] == 0
    (item,) = json.loads((tmp_path / "manifest.json").read_text())["items"]
    assert [o["target"] for o in item["outputs"]] == [p["index"] for p in item["predictions"][:3]]


def test_panel_has_the_papers_five_tiles(tmp_path, capsys):
    assert run(["explain", sample_path("coffee"), "--out", tmp_path, *FAST], capsys)[0] == 0
    (item,) = json.loads((tmp_path / "manifest.json").read_text())["items"]
    assert [o["method"] for o in item["outputs"]] == ["gradcam", "guided-backprop", "guided-gradcam", "counterfactual"]
    panel = Image.open(item["outputs"][0]["panel"])
    tile = Image.open(item["outputs"][0]["overlay"])
    assert panel.width > 5 * tile.width * panel.height / tile.height * 0.8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "2"], "--alpha must be in [0, 1]; got 2.0"),
        (["--target", "kitty"], "--target 'kitty': unknown class 'kitty'"),
        (["--layer", "blocks.99"], "layer 'blocks.99' not found in EfficientNetLite; close matches:"),
        (["--model", "torchvision:resnet50"], "Put the file resnet50-11ad3fa6.pth"),
        (["--model", "nosuchmodel"], "unknown model spec 'nosuchmodel'"),
        (["--outputs", "heatmap,video"], "--outputs takes a comma-separated subset of overlay,heatmap,panel,raw; got"),
    ],
)
def test_bad_arguments_give_clear_messages(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code, _out, err = run(["explain", sample_path("coffee"), "--out", tmp_path / "out", *FAST, *args], capsys)
    assert code == 2
    assert message in err


def test_outputs_selects_the_files_written_and_keys_the_resume(tmp_path, capsys):
    """--outputs heatmap writes the same maps as a full run and nothing else; a full rerun redoes the item."""
    shutil.copy(sample_path("coffee"), tmp_path / "coffee.jpg")
    base = ["explain", tmp_path / "coffee.jpg", "--method", "gradcam", "--method", "guided-backprop", *FAST]
    assert run([*base, "--out", tmp_path / "full"], capsys)[0] == 0
    assert run([*base, "--out", tmp_path / "maps", "--outputs", "heatmap"], capsys)[0] == 0
    written = sorted(p.name for p in (tmp_path / "maps" / "coffee_jpg").iterdir())
    assert written == ["gradcam_967_espresso.npy", "guided-backprop_967_espresso.npy", "item.json"]
    (item,) = json.loads((tmp_path / "maps" / "manifest.json").read_text())["items"]
    assert [(o["overlay"], o["panel"]) for o in item["outputs"]] == [(None, None), (None, None)]
    for output in item["outputs"]:
        twin = tmp_path / "full" / Path(output["heatmap"]).relative_to(tmp_path / "maps")
        np.testing.assert_array_equal(np.load(output["heatmap"]), np.load(twin))
    code, out, _ = run([*base, "--out", tmp_path / "maps", "--outputs", "panel,overlay"], capsys)
    assert code == 0 and "1 explained, 0 already done" in out
    assert sorted(p.suffix for p in (tmp_path / "maps" / "coffee_jpg").iterdir()).count(".png") == 3


def test_raw_outputs_are_small_and_say_where_they_are(tmp_path, capsys):
    shutil.copy(sample_path("coffee"), tmp_path / "coffee.jpg")
    args = ["explain", tmp_path / "coffee.jpg", "--method", "gradcam", *FAST, "--out", tmp_path / "raw"]
    code, out, _ = run([*args, "--outputs", "raw"], capsys)
    assert code == 0
    folder = tmp_path / "raw" / "coffee_jpg"
    assert sorted(p.name for p in folder.iterdir()) == ["gradcam_967_espresso_raw.npy", "item.json"]
    assert f"raw files in {tmp_path / 'raw'}/ (e.g. {folder / 'gradcam_967_espresso_raw.npy'})" in out
    assert (folder / "gradcam_967_espresso_raw.npy").stat().st_size == 128 + 7 * 7 * 4  # .npy header + 49 floats


def test_jpeg_pictures_match_the_png_ones_and_key_the_resume(tmp_path, capsys):
    """--picture-format jpg writes the same overlay and panel as JPEG (within JPEG's error), the same maps,
    and a rerun in the other format redoes the item while one in the same format skips it."""
    shutil.copy(sample_path("coffee"), tmp_path / "coffee.jpg")
    base = ["explain", tmp_path / "coffee.jpg", "--method", "gradcam", *FAST]
    assert run([*base, "--out", tmp_path / "png"], capsys)[0] == 0
    assert run([*base, "--out", tmp_path / "jpg", "--picture-format", "jpg"], capsys)[0] == 0
    written = sorted(p.name for p in (tmp_path / "jpg" / "coffee_jpg").iterdir())
    assert written == ["gradcam_967_espresso.jpg", "gradcam_967_espresso.npy", "item.json", "panel_967_espresso.jpg"]
    for name in ("gradcam_967_espresso", "panel_967_espresso"):
        lossless = np.asarray(Image.open(tmp_path / "png" / "coffee_jpg" / f"{name}.png").convert("RGB"), dtype=float)
        jpeg = np.asarray(Image.open(tmp_path / "jpg" / "coffee_jpg" / f"{name}.jpg"), dtype=float)
        assert jpeg.shape == lossless.shape
        assert np.abs(jpeg - lossless).mean() < 3.0  # quality 95: a few levels on average, not another picture
    np.testing.assert_array_equal(
        np.load(tmp_path / "jpg" / "coffee_jpg" / "gradcam_967_espresso.npy"),
        np.load(tmp_path / "png" / "coffee_jpg" / "gradcam_967_espresso.npy"),
    )
    code, out, _ = run([*base, "--out", tmp_path / "jpg", "--picture-format", "jpg"], capsys)
    assert code == 0 and "0 explained, 1 already done" in out
    code, out, _ = run([*base, "--out", tmp_path / "jpg"], capsys)
    assert code == 0 and "1 explained, 0 already done" in out
    assert (tmp_path / "jpg" / "coffee_jpg" / "gradcam_967_espresso.png").is_file()


def test_missing_path_is_an_error(tmp_path, capsys):
    code, _, err = run(["explain", tmp_path / "absent.jpg", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "absent.jpg" in err


def test_parallel_decoding_and_writing_give_the_same_outputs(tmp_path, capsys):
    """Decoding processes (uint8 batches) and two writer threads write what the in-process decoding
    threads and one writer thread per torch thread write."""
    for name in ("coffee", "cameraman", "chelsea_cat"):
        shutil.copy(sample_path(name), tmp_path / f"{name}.jpg")
    base = ["explain", tmp_path, "--method", "gradcam", "--quiet", "--batch-size", "2", "--outputs",
            "heatmap,raw,overlay"]  # fmt: skip
    assert run([*base, "--out", tmp_path / "serial", "--workers", "0", "--writers", "0"], capsys)[0] == 0
    assert run([*base, "--out", tmp_path / "parallel", "--workers", "2", "--writers", "2"], capsys)[0] == 0
    written = sorted((tmp_path / "serial").rglob("*.npy"))
    assert len(written) == 6  # 3 images x (heatmap, raw)
    # with workers the job runs its explanations with other thread settings (bitwise equal at 1 torch thread,
    # 6e-7 apart at 2): Lite0's bound, as in tests/batch (45 layers, 1280-term sums, forward and back, alpha and
    # the channel sum), on each image's raw map; the heatmaps from its upsampled span and the resize's taps
    loaded = load_model()
    items = json.loads((tmp_path / "serial" / "manifest.json").read_text())["items"]
    assert len(items) == 3
    for item in items:
        x, _ = prepare_image(load_image(item["input"]), loaded.preprocess)
        (output,) = item["outputs"]
        e = gradcam.GradCAM(loaded.model, loaded.default_layer)(x[None], output["target"])
        activations = layer_output(loaded.model, loaded.default_layer, x[None])
        raw_atol = sum_atol(1280, cam_magnitude(e.weights, activations), depth=92)
        heat_atol = heatmap_atol(e.raw, tuple(x.shape[-2:]), raw_atol) + sum_atol(4, 1.0, depth=2)
        for kind, atol in (("raw", raw_atol), ("heatmap", heat_atol)):
            npy = Path(output[kind])
            twin = tmp_path / "parallel" / npy.relative_to(tmp_path / "serial")
            np.testing.assert_allclose(np.load(twin), np.load(npy), rtol=0, atol=atol)
    # an overlay is round(image / 2 + LUT[round(255 v)] / 2): a heatmap value that close to a LUT boundary may
    # take the neighbouring jet entry, which moves the pixel by half the LUT's largest step, plus a rounding
    jet = colormap("jet").astype(int)
    levels = int(np.ceil(np.abs(np.diff(jet, axis=0)).max() / 2)) + 1
    for png in (tmp_path / "serial").rglob("*.png"):
        twin = tmp_path / "parallel" / png.relative_to(tmp_path / "serial")
        assert np.abs(np.asarray(Image.open(png), int) - np.asarray(Image.open(twin), int)).max() <= levels


def test_layers_and_models_commands(capsys):
    code, out, _ = run(["layers"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("bn2 "))
    assert "1x1280x7x7" in line and "automatic choice" in line
    code, out, _ = run(["models"], capsys)
    assert code == 0 and out.startswith("efficientnet_lite0") and " yes " in out.splitlines()[0]


def test_a_failed_write_is_a_clear_error_and_the_rerun_finishes_the_job(tmp_path, capsys, monkeypatch):
    """A full disk (ENOSPC from the writers) stops the job with a message, not a traceback; the items
    committed before it are kept, and the rerun writes only the others."""
    import errno

    from gradcam.batch import outputs

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee", "rocket", "chelsea_cat"):
        shutil.copy(sample_path(name), folder / f"{name}.jpg")
    real_write = outputs._write_outputs
    calls = {"n": 0}

    def full_disk(item_dir, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(item_dir / "gradcam.npy"))
        return real_write(item_dir, *args)

    monkeypatch.setattr(outputs, "_write_outputs", full_disk)
    out = tmp_path / "out"
    args = ["explain", folder, "--out", out, "--outputs", "heatmap", "--batch-size", "2", "--workers", "0"]
    code, _, err = run([*args, "--quiet"], capsys)
    assert code == 1
    assert f"gradcam explain: error: cannot write the outputs under {out}: [Errno 28] No space left on device" in err
    assert "Traceback" not in err
    assert len(list(out.rglob("item.json"))) == 2  # the first batch was committed
    monkeypatch.setattr(outputs, "_write_outputs", real_write)
    code, stdout, _ = run(args, capsys)
    assert code == 0
    assert "1 explained, 2 already done, 0 failed" in stdout
