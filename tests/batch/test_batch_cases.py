"""A batch job never loses or mixes up an item: odd names, odd files, huge strips, resumes, broken pipes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.batch import outputs
from gradcam.batch.inputs import output_folder
from gradcam.batch.loop import explain_files
from gradcam.batch.settings import ExplainSettings, JobSummary
from gradcam.imaging import io as image_io
from gradcam.imaging.io import ImageReadError, find_images, read_pixels

RUN = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": 0, "progress": False}


@pytest.fixture(scope="module")
def loaded():
    from gradcam.models import load_model

    return load_model()


def _image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _raw_job(paths, loaded, out: Path, **options) -> JobSummary:
    settings = ExplainSettings(methods=("gradcam",), outputs=("raw",))
    return explain_files(paths, loaded, settings, out, **{**RUN, **options})


# ------------------------------------------------------------------------------------------- (a) names


def test_a_file_name_that_is_not_utf8_is_explained_and_recorded_losslessly(tmp_path: Path, loaded) -> None:
    name = os.fsencode(tmp_path) + b"/in/caf\xe9.png"
    path = _image(Path(os.fsdecode(name)))
    lines: list[str] = []
    summary = _raw_job([path], loaded, tmp_path / "out", report=lambda line, _: lines.append(line))
    assert (summary.done, summary.failed) == (1, 0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_bytes().decode("utf-8"))  # valid UTF-8
    (item,) = manifest["items"]
    assert item["input"] == os.fsdecode(tmp_path) + "/in/caf\\xe9.png"  # printable
    assert base64.b64decode(item["input_bytes"]) == name  # and exact
    assert os.fsdecode(base64.b64decode(item["input_bytes"])) == str(path)
    raw = Path(item["outputs"][0]["raw"])
    assert raw.parent.name == "caf%E9_png" and raw.is_file()
    assert lines[0].startswith(item["input"] + ": ")
    lines[0].encode("utf-8")  # a line the CLI can print
    assert _raw_job([path], loaded, tmp_path / "out").skipped == 1  # and it resumes


def test_output_folder_names_are_injective_and_keep_plain_names() -> None:
    root = Path("/data")
    names = ["x.y.png", "x_y.png", "a_.png", "a._png", "a_png", "a.png", "a", "%41.png", "A.png", ".png",
             "d.e/f.png", "d_e/f.png", "d%2Ee/f.png", "b.jpg", "b_jpg/c.png"]  # fmt: skip
    folders = [output_folder(root / name, root) for name in names]
    assert folders == ["x%2Ey_png", "x_y_png", "a__png", "a_%5Fpng", "a%5Fpng", "a_png", "a", "%2541_png",
                       "A_png", "_png", "d%2Ee/f_png", "d_e/f_png", "d%252Ee/f_png", "b_jpg",
                       "b_jpg/c_png"]  # fmt: skip
    assert len(set(folders)) == len(folders)
    assert output_folder(Path("/data/chelsea_cat.jpg"), root) == "chelsea_cat_jpg"  # as before


def test_names_that_shared_a_folder_get_their_own(tmp_path: Path, loaded) -> None:
    paths = [_image(tmp_path / "in" / "x.y.png", seed=1), _image(tmp_path / "in" / "x_y.png", seed=2)]
    summary = _raw_job(paths, loaded, tmp_path / "out")
    assert summary.done == 2
    folders = {Path(item["outputs"][0]["raw"]).parent.name: item["input"] for item in summary.items}
    assert folders == {"x%2Ey_png": str(paths[0]), "x_y_png": str(paths[1])}
    assert _raw_job(paths, loaded, tmp_path / "out").skipped == 2


# ----------------------------------------------------------------------------------------- (b) a strip


def test_a_1_x_40000_png_is_explained_without_building_its_resized_frame(
    tmp_path: Path, loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lite0 resizes the short side to 256: this strip's frame would be 256 x 10240000 pixels (7.8 GB of
    uint8, 10 GB of float32 per map). The crop and the maps are sampled instead: no tensor resampled by
    the job is larger than the image or the crop."""
    strip = tmp_path / "in" / "strip.png"
    strip.parent.mkdir()
    values = np.linspace(0, 255, 40000).astype(np.uint8)
    Image.fromarray(np.stack([values, values[::-1], np.full_like(values, 128)], axis=-1)[None]).save(strip)
    largest = {"elements": 0}
    real_interpolate, real_sample = torch.nn.functional.interpolate, torch.nn.functional.grid_sample

    def watched(function):
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            largest["elements"] = max(largest["elements"], result.numel())
            return result

        return call

    monkeypatch.setattr(torch.nn.functional, "interpolate", watched(real_interpolate))
    monkeypatch.setattr(torch.nn.functional, "grid_sample", watched(real_sample))
    settings = ExplainSettings(methods=("gradcam",))  # overlay, heatmap, panel
    summary = explain_files([strip], loaded, settings, tmp_path / "out", **RUN)
    assert (summary.done, summary.failed) == (1, 0)
    assert largest["elements"] <= 3 * 224 * 224  # the crop; the full frame would be 786432000 x 3
    (output,) = summary.items[0]["outputs"]
    heatmap = np.load(output["heatmap"])
    assert heatmap.shape == (1, 40000) and heatmap.dtype == np.float32
    crop = summary.items[0]["geometry"]["crop_box"]  # the crop covers columns 19999.56 ... 20000.44 of 40000
    assert crop == [5119888, 16, 5120112, 240]
    # 0.875 of a pixel wide, the crop lies between the centres of pixels 19999 and 20000, where the map is
    # sampled (bilinear, as from the full frame): the whole heatmap is 0, as the full frame's would be
    assert heatmap.max() == 0
    assert Image.open(output["overlay"]).size == (40000, 1)


def test_a_drawing_failure_fails_that_image_only(tmp_path: Path, loaded, monkeypatch) -> None:
    paths = [_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    real_overlay = outputs.draw.overlay

    def overlay(image, heatmap, *args, **kwargs):
        if image.size == (50, 40):
            raise ValueError("cannot draw this one")
        return real_overlay(image, heatmap, *args, **kwargs)

    _image(paths[1], size=(50, 40), seed=9)
    monkeypatch.setattr(outputs.draw, "overlay", overlay)
    settings = ExplainSettings(methods=("gradcam",), outputs=("overlay",))
    summary = explain_files(paths, loaded, settings, tmp_path / "out", **RUN)
    assert (summary.done, summary.failed) == (2, 1)
    assert summary.failures == [{"input": str(paths[1]), "error": f"{paths[1]}: cannot draw or encode its "
                                 "outputs: ValueError: cannot draw this one"}]  # fmt: skip
    assert [item["input"] for item in summary.items] == [str(paths[0]), str(paths[2])]
    assert not (tmp_path / "out" / "1_png" / "item.json").exists()


# -------------------------------------------------------------------------------------------- (c) resume


def test_a_rerun_redoes_an_item_whose_input_or_outputs_changed(tmp_path: Path, loaded) -> None:
    paths = [_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out"
    first = _raw_job(paths, loaded, out)
    assert first.done == 3
    record = json.loads((out / "0_png" / "item.json").read_text())
    status = os.stat(paths[0])
    assert record["source"] == {"size": status.st_size, "mtime_ns": status.st_mtime_ns}
    first_raw = Path(record["outputs"][0]["raw"])
    assert record["files"] == {first_raw.name: 128 + 7 * 7 * 4}  # the .npy header, then 7 x 7 float32
    before = np.load(first_raw)

    _image(paths[0], seed=7)  # same name and size, other pixels: its mtime changes
    os.utime(paths[0], ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
    Path(json.loads((out / "1_png" / "item.json").read_text())["outputs"][0]["raw"]).unlink()  # an output lost
    again = _raw_job(paths, loaded, out)
    assert (again.done, again.skipped) == (2, 1)
    assert [item["input"] for item in again.items] == [str(p) for p in paths]
    redone = json.loads((out / "0_png" / "item.json").read_text())
    assert np.abs(np.load(redone["outputs"][0]["raw"]) - before).max() > 0  # from the new pixels

    listed = Path(json.loads((out / "2_png" / "item.json").read_text())["outputs"][0]["raw"])
    listed.write_bytes(listed.read_bytes()[:100])  # torn: present, but not the size item.json recorded
    assert _raw_job(paths, loaded, out).done == 1


def test_a_rerun_never_explains_its_own_outputs(tmp_path: Path, capsys, monkeypatch) -> None:
    from gradcam.cli import main

    _image(tmp_path / "a.png", seed=1)
    _image(tmp_path / "sub" / "b.png", seed=2)
    monkeypatch.chdir(tmp_path)
    args = ["explain", ".", "--out", "out", "--method", "gradcam", "--quiet", "--workers", "0"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 explained, 2 already done, 0 failed" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [Path(item["input"]).name for item in manifest["items"]] == ["a.png", "b.png"]
    assert find_images([tmp_path], exclude=tmp_path / "out") == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert len(find_images([tmp_path])) > 2  # the overlays and panels, without the exclusion


def test_an_input_inside_the_output_folder_given_explicitly_is_reported(tmp_path: Path, loaded) -> None:
    inside = _image(tmp_path / "out" / "old.png")
    summary = _raw_job([inside], loaded, tmp_path / "out")
    assert (summary.done, summary.failed) == (0, 1)
    assert "is inside the output folder" in summary.failures[0]["error"]


def test_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path: Path, loaded) -> None:
    path = _image(tmp_path / "in" / "a.png")
    item_dir = tmp_path / "out" / "a_png"
    item_dir.mkdir(parents=True)
    left = [item_dir / ".gradcam_1_x.png.k2j3.gradcam-tmp", tmp_path / "out" / ".manifest.json.z9.gradcam-tmp"]
    for temp in left:
        temp.write_bytes(b"partial")
    assert _raw_job([path], loaded, tmp_path / "out").done == 1
    assert not any(temp.exists() for temp in left)
    assert not list((tmp_path / "out").rglob("*" + image_io.TEMP_SUFFIX))
    left[0].write_bytes(b"partial")  # beside a finished item (a killed --overwrite run)
    assert _raw_job([path], loaded, tmp_path / "out").skipped == 1
    assert not left[0].exists()


# ---------------------------------------------------------------------------------------- (d) writers


def test_the_writers_end_with_the_job_even_when_it_fails(tmp_path: Path, loaded, monkeypatch) -> None:
    import errno
    import multiprocessing

    paths = [_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_outputs", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        _raw_job(paths, loaded, tmp_path / "out", writers=3)
    assert [t.name for t in threading.enumerate() if t.name.startswith("gradcam-")] == []
    assert multiprocessing.active_children() == []


# ------------------------------------------------------------------------------- (e) pipes and odd files


def test_odd_entries_named_like_images_in_a_folder_are_reported_not_skipped(tmp_path: Path, capsys) -> None:
    from gradcam.cli import main

    folder = tmp_path / "in"
    _image(folder / "good.png")
    os.mkfifo(folder / "fifo.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    out = tmp_path / "out"
    code = main(["explain", str(folder), "--out", str(out), "--method", "gradcam", "--outputs", "raw", "--quiet",
                 "--workers", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(item["input"]).name for item in manifest["items"]] == ["good.png"]
    errors = {Path(f["input"]).name: f["error"] for f in manifest["failed"]}
    assert errors == {
        "dangling.jpg": f"cannot read image '{folder / 'dangling.jpg'}': broken symbolic link (its target "
        f"'{folder / 'missing.jpg'}' does not exist)",
        "fifo.jpg": f"cannot read image '{folder / 'fifo.jpg'}': not a regular file (a named pipe (FIFO))",
        "loop.jpg": f"cannot read image '{folder / 'loop.jpg'}': symbolic link loop (the link points, through "
        "links, back to itself)",
    }
    assert all(error in err for error in errors.values())


def test_a_fifo_given_explicitly_gets_a_clear_message(tmp_path: Path, capsys) -> None:
    from gradcam.cli import main

    os.mkfifo(tmp_path / "pipe.jpg")
    code = main(["explain", str(tmp_path / "pipe.jpg"), "--out", str(tmp_path / "out"), "--quiet", "--workers", "0"])
    assert code == 1
    assert "pipe.jpg': not a regular file (a named pipe (FIFO))" in capsys.readouterr().err
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_pixels(tmp_path / "pipe.jpg")


def test_a_closed_stdout_is_not_an_output_failure(tmp_path: Path) -> None:
    """``gradcam explain DIR | head -2``: the reader leaves; the job finishes its outputs, exit code 0."""
    for i in range(3):
        _image(tmp_path / "in" / f"{i}.png", seed=i)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    result = subprocess.run(_command(tmp_path), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert "cannot write the outputs" not in result.stderr and "Traceback" not in result.stderr
    assert len(list((tmp_path / "out").rglob("item.json"))) == 3
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["items"]) == 3


def test_a_closed_stderr_is_not_an_output_failure_either(tmp_path: Path) -> None:
    """``gradcam explain DIR 2>&1 | head -2`` with a bad file: its failure line cannot be shown, the
    job still ends with every item and the failure in the manifest, exit code 1."""
    for i in range(3):
        _image(tmp_path / "in" / f"{i}.png", seed=i)
    (tmp_path / "in" / "bad.jpg").write_text("not an image")
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run(_command(tmp_path), stdout=write_end, stderr=write_end, timeout=300)
    os.close(write_end)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert result.returncode == 1
    assert len(manifest["items"]) == 3 and [Path(f["input"]).name for f in manifest["failed"]] == ["bad.jpg"]


def _command(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "gradcam", "explain", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
            "--method", "gradcam", "--outputs", "raw", "--workers", "0", "--batch-size", "2"]  # fmt: skip


# -------------------------------------------------------------------------------------------- (f) formats


def test_an_eps_file_named_jpg_is_reported_and_never_handed_to_ghostscript(tmp_path: Path, loaded, monkeypatch):
    from PIL import EpsImagePlugin

    opened: list[str] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps"))
    eps = tmp_path / "in" / "photo.jpg"
    eps.parent.mkdir()
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    with pytest.raises(ImageReadError, match="not an image file \\(unrecognised format\\)"):
        read_pixels(eps)
    summary = _raw_job([eps], loaded, tmp_path / "out")
    assert summary.failed == 1 and "not an image file (unrecognised format)" in summary.failures[0]["error"]
    assert opened == []
