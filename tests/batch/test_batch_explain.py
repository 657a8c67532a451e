"""Tests for gradcam.batch's batch machinery: threaded decoding and maps on original pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.batch import loop, outputs
from gradcam.batch.inputs import ImageFiles, decoded_batches, prepare_image, same_size_groups
from gradcam.batch.loop import default_pipeline, explain_files
from gradcam.batch.outputs import heatmap_from_raw, maps_to_originals
from gradcam.batch.settings import DEFAULT_OUTPUTS, ExplainSettings, JobSummary
from gradcam.imaging.geometry import PreprocessConfig, compute_geometry, normalize_pixels, preprocess
from gradcam.imaging.io import load_image
from gradcam.models import WholeImagePreprocess
from tolerances import assert_close, cam_magnitude, heatmap_atol, layer_output, sum_atol

CONFIG = PreprocessConfig(input_size=32, resize_size=40, interpolation="bicubic")


def _folder(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(64, 48), (48, 64), (64, 48), (50, 50), (64, 48)]):
        path = tmp_path / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    bad = tmp_path / "img_5.jpg"
    bad.write_text("not an image")
    return [*paths, bad, tmp_path / "img_6.png"]  # a bad file and a missing one


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_decoding_gives_the_dataloaders_batches(tmp_path: Path, threads: int) -> None:
    files = ImageFiles(_folder(tmp_path), CONFIG)
    reference = list(decoded_batches(files, 3, workers=0, threads=1, pin_memory=False))  # the DataLoader
    threaded = list(decoded_batches(files, 3, workers=0, threads=threads, pin_memory=False))
    assert len(threaded) == len(reference) == 3
    for ours, theirs in zip(threaded, reference):
        assert ours["indices"] == theirs["indices"]
        assert ours["geometries"] == theirs["geometries"]
        assert [f[0] for f in ours["failures"]] == [f[0] for f in theirs["failures"]]
        for a, b in zip(ours["tensors"], theirs["tensors"]):
            assert torch.equal(a, b)
        for a, b in zip(ours["originals"], theirs["originals"]):
            assert torch.equal(a, b)
    failures = [f for batch in threaded for f in batch["failures"]]
    assert [index for index, _ in failures] == [5, 6]
    assert "not an image" in failures[0][1] and "no such file" in failures[1][1]


@pytest.mark.parametrize("config", [CONFIG, WholeImagePreprocess(resize_size=40, interpolation="bilinear")])
def test_batches_carry_uint8_crops_that_normalise_to_the_model_inputs_bit_for_bit(tmp_path: Path, config) -> None:
    """Decoding workers send uint8 crops; normalising a whole batch gives each image's prepare_image input."""
    paths = _folder(tmp_path)
    one_by_one = config if isinstance(config, WholeImagePreprocess) else (lambda image: preprocess(image, config))
    expected = {i: one_by_one(load_image(p)) for i, p in enumerate(paths[:5])}
    assert all(torch.equal(prepare_image(load_image(p), config)[0], expected[i][0]) for i, p in enumerate(paths[:5]))
    seen = 0
    for batch in decoded_batches(ImageFiles(paths, config), 3, workers=0, threads=2, pin_memory=False):
        for positions, pixels in same_size_groups(batch):
            assert pixels.dtype == torch.uint8
            x = normalize_pixels(pixels, config)
            for row, position in enumerate(positions):
                index = batch["indices"][position]
                assert torch.equal(x[row], expected[index][0])
                assert batch["geometries"][position] == expected[index][1]
                seen += 1
    assert seen == 5


def test_items_keep_the_decoded_pixels_only_when_asked(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    drawn, not_drawn = ImageFiles(paths, CONFIG)[1], ImageFiles(paths, CONFIG, keep_original=False)[1]
    np.testing.assert_array_equal(drawn["original"].numpy(), np.asarray(load_image(paths[1])))
    assert not_drawn["original"] is None
    assert torch.equal(drawn["tensor"], not_drawn["tensor"])


def test_maps_to_originals_equal_each_rows_own_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = [(64, 48), (48, 64), (64, 48), (64, 48), (50, 50)]
    geometries = [compute_geometry(size, CONFIG) for size in sizes]
    maps = torch.rand(len(sizes), 2, 32, 32)  # B images x k targets
    expected = [g.to_original(maps[i]) for i, g in enumerate(geometries)]
    for limit in (1 << 25, 2 * 64 * 48 * 2):  # one call per size, or chunks of two rows
        monkeypatch.setattr(outputs, "_RESAMPLE_ELEMENTS", limit)
        views = maps_to_originals(maps, geometries)
        assert len(views) == len(sizes)
        for view, theirs, (width, height) in zip(views, expected, sizes):
            assert view.shape == (2, height, width)
            assert_close(view, theirs, terms=4, depth=2)  # bilinear: 2 x 2 convex taps on values in [0, 1]
        shared = sum(v.untyped_storage().nbytes() > v.numel() * 4 for v in views)
        assert shared == (3 if limit > 1 << 20 else 2)  # 64 x 48 rows share a call: all three, or two per chunk


def test_settings_refuse_an_unknown_picture_format_and_key_a_jpeg_choice() -> None:
    with pytest.raises(ValueError, match="picture_format must be one of png, jpg; got 'gif'"):
        ExplainSettings(picture_format="gif")
    png, jpg = ExplainSettings(), ExplainSettings(picture_format="jpg")
    assert "picture_format" not in png.key("m", None)  # outputs of older versions stay reusable
    assert jpg.key("m", None)["picture_format"] == "jpg"


def test_an_empty_or_torn_done_marker_is_redone(tmp_path: Path) -> None:
    """item.json is written without fsync: after a power cut it may be empty; the rerun must redo the item."""
    from gradcam.models import load_model

    paths = _folder(tmp_path)[:2]
    loaded = load_model()
    settings = ExplainSettings(methods=("gradcam",), outputs=("heatmap",))
    run = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": 0, "progress": False}
    first = explain_files(paths, loaded, settings, tmp_path / "out", **run)
    assert first.done == 2
    markers = sorted((tmp_path / "out").rglob("item.json"))
    markers[0].write_text("")
    markers[1].write_text('{"input": ')
    again = explain_files(paths, loaded, settings, tmp_path / "out", **run)
    assert (again.done, again.skipped) == (2, 0)
    assert all(json.loads(m.read_text())["outputs"] for m in markers)


@pytest.mark.parametrize("writers", [0, 2])
def test_an_item_is_marked_done_only_after_its_outputs_are_on_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    """Every output is fsynced (its temp file, whose inode the renamed output keeps) before the item.json
    that lists it is written; item.json and the outputs' sizes it records are then checked by a rerun."""
    import os

    from gradcam.models import load_model

    paths = _folder(tmp_path)[:5]
    out = tmp_path / "out"
    settings = ExplainSettings(methods=("gradcam", "counterfactual"), outputs=("heatmap", "raw", "overlay"))
    fsynced: set[int] = set()  # inodes
    marked: list[Path] = []
    real_fsync, real_write_json = os.fsync, outputs.write_json_atomic

    def fsync(fd: int) -> None:
        fsynced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def write_json(path: Path, record: dict, durable: bool = True) -> Path:
        if path.name == "item.json":
            files = [Path(o[kind]) for o in record["outputs"] for kind in ("heatmap", "raw", "overlay")]
            assert len(files) == 6 and all(f.stat().st_ino in fsynced for f in files)
            assert record["files"] == {f.name: f.stat().st_size for f in files}
            assert not durable  # lost after a power cut: the rerun redoes the item
            marked.append(path)
        return real_write_json(path, record, durable)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(outputs, "write_json_atomic", write_json)
    run = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": writers, "progress": False}
    summary = explain_files(paths, load_model(), settings, out, **run)
    assert summary.done == 5 and len(marked) == 5
    written = {p for p in out.rglob("*") if p.is_file() and p.name not in ("item.json", "manifest.json")}
    assert len(written) == 5 * 2 * 3  # 5 images x 2 methods x (heatmap, raw, overlay)


def test_a_class_job_runs_the_model_once_per_batch(tmp_path: Path) -> None:
    """No probe forward (the layer's reshape is read from the first batch): one forward per batch."""
    from gradcam.models import load_model

    forwards: list[int] = []
    summary = _raw_job_seen_by(load_model(), tmp_path, lambda module, args: forwards.append(args[0].shape[0]))
    assert summary.done == 5
    assert forwards == [2, 2, 1]


def _raw_job_seen_by(loaded, tmp_path: Path, hook) -> JobSummary:
    """A Grad-CAM job writing raw maps of 5 images in batches of 2 on the CPU, ``hook`` seeing each forward."""
    handle = loaded.model.register_forward_pre_hook(hook)
    try:
        settings = ExplainSettings(methods=("gradcam",), outputs=("raw",))
        run = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": 0, "progress": False}
        return explain_files(_folder(tmp_path)[:5], loaded, settings, tmp_path / "out", **run)
    finally:
        handle.remove()


def _watched_pool(on_submit):
    """A stand-in for ``outputs._writer_pool`` that calls ``on_submit(items)`` for each writer task."""
    real_pool = outputs._writer_pool

    class Pool:
        def __init__(self, writers):
            self.pool = real_pool(writers)

        def submit(self, function, items):  # a writer task: a share of one batch's items
            on_submit(items)
            return self.pool.submit(function, items)

        def shutdown(self, wait=True):
            self.pool.shutdown(wait=wait)

    return Pool


def test_on_the_cpu_a_batchs_writes_finish_before_the_next_model_step(tmp_path: Path, monkeypatch) -> None:
    """On a CPU device the writers never run beside the model: every item handed to them is written
    before the next forward starts (slow writers make an overlap show)."""
    import time

    from gradcam.models import load_model

    written: list[int] = []
    handed: list[int] = []
    at_forwards: list[tuple[int, int]] = []  # (items handed to the writers, items written) at each forward
    real_write_items = outputs._write_items

    def slow_write_items(items):
        time.sleep(0.05)
        records = real_write_items(items)
        written.append(len(items))
        return records

    monkeypatch.setattr(outputs, "_write_items", slow_write_items)
    monkeypatch.setattr(outputs, "_writer_pool", _watched_pool(lambda items: handed.append(len(items))))
    summary = _raw_job_seen_by(load_model(), tmp_path, lambda *_: at_forwards.append((sum(handed), sum(written))))
    assert summary.done == 5 and sum(written) == 5
    assert at_forwards == [(0, 0), (2, 2), (4, 4)]


def test_threaded_decoding_leaves_the_process_thread_settings_alone(tmp_path: Path) -> None:
    import threading

    def fresh_thread_count() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs with 1, which a thread's set_num_threads(1) would not change
    try:
        assert (torch.get_num_threads(), fresh_thread_count()) == (2, 2)
        list(decoded_batches(ImageFiles(_folder(tmp_path), CONFIG), 2, workers=0, threads=2, pin_memory=False))
        assert (torch.get_num_threads(), fresh_thread_count()) == (2, 2)
    finally:
        torch.set_num_threads(previous)


def test_a_batch_is_shared_among_the_writers_in_order() -> None:
    assert outputs._shares(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert outputs._shares(list(range(16)), 2) == [list(range(8)), list(range(8, 16))]
    assert outputs._shares([7], 4) == [[7]]
    assert outputs._shares(list(range(3)), 0) == [[0, 1, 2]]
    assert outputs._shares([], 2) == []


def test_default_pipeline_stays_in_process_on_the_cpu_and_scales_on_an_accelerator(monkeypatch) -> None:
    assert default_pipeline(torch.device("cpu"), 1000) == (0, 0)
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 16)
    assert default_pipeline(torch.device("cuda"), 1000) == (13, 2)  # the main process and 2 writers keep 3
    assert default_pipeline(torch.device("cuda"), 3) == (2, 2)  # no more decoders than files - 1
    monkeypatch.setattr(loop.os, "cpu_count", lambda: 128)
    assert default_pipeline(torch.device("cuda"), 1000) == (16, 2)
    for cores in (None, 1, 2, 4):
        monkeypatch.setattr(loop.os, "cpu_count", lambda cores=cores: cores)
        assert default_pipeline(torch.device("cuda"), 1000) == (max(1, (cores or 1) - 3), 2)


@pytest.mark.parametrize("writers", [0, 2])
def test_raw_output_is_the_explanations_raw_map_and_rebuilds_the_heatmap(
    tmp_path: Path, writers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``raw`` writes Explanation.raw (7 x 7 Grad-CAM before upsampling, unnormalised); with the geometry
    in item.json, heatmap_from_raw gives the heatmap .npy the job writes (one writer thread per torch
    thread, or two)."""
    from gradcam.imaging.geometry import Geometry, preprocess
    from gradcam.methods import create_explainer
    from gradcam.models import load_model

    paths = _folder(tmp_path)[:3]  # three sizes: landscape, portrait, landscape
    loaded = load_model()
    methods = ("gradcam", "counterfactual", "guided-backprop")
    settings = ExplainSettings(methods=methods, outputs=("raw", "heatmap"))
    run = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": writers, "progress": False}
    summary = explain_files(paths, loaded, settings, tmp_path / "out", **run)
    assert summary.done == 3
    gradcam = create_explainer("gradcam", loaded.model, loaded.default_layer)
    for path, item in zip(paths, summary.items):
        geometry = Geometry.from_json(item["geometry"])
        x, expected_geometry = preprocess(load_image(path), loaded.preprocess)
        assert geometry == expected_geometry
        by_method = {o["method"]: o for o in item["outputs"]}
        raw = torch.from_numpy(np.load(by_method["gradcam"]["raw"]))
        direct = gradcam(x[None], by_method["gradcam"]["target"])
        assert raw.shape == direct.raw.shape[1:] == (7, 7)
        # a batch of 2 against 1 through Lite0's 45 conv / linear layers (longest sum: the head's 1280 features;
        # forward and backward, depth 90), then alpha's 49 cells and the sum over 1280 channels
        magnitude = cam_magnitude(direct.weights, layer_output(loaded.model, loaded.default_layer, x[None]))
        torch.testing.assert_close(raw, direct.raw[0], rtol=0, atol=sum_atol(1280, magnitude, depth=92))
        assert abs(float(raw.max()) - 1.0) > 0.01  # not min-max normalised: the absolute magnitude is kept
        for method in ("gradcam", "counterfactual"):
            rebuilt = heatmap_from_raw(torch.from_numpy(np.load(by_method[method]["raw"])), geometry)
            written = torch.from_numpy(np.load(by_method[method]["heatmap"]))
            assert rebuilt.shape == written.shape == (geometry.original_size[1], geometry.original_size[0])
            # the same raw map through the same upsampling (2 x 2 bilinear taps), normalisation and resize to the
            # original (2 x 2 taps on [0, 1]): the job's batched, this alone
            raw_map = torch.from_numpy(np.load(by_method[method]["raw"]))
            width, height = geometry.input_size
            upsampled = heatmap_atol(raw_map, (height, width), sum_atol(4, float(raw_map.abs().max()), depth=2))
            torch.testing.assert_close(rebuilt, written, rtol=0, atol=upsampled + sum_atol(4, 1.0, depth=2))
        gradients = np.load(by_method["guided-backprop"]["raw"])
        assert gradients.shape == (3, 224, 224) and np.abs(gradients).max() > 0
    with pytest.raises(ValueError, match="one \\(u, v\\) class-activation map"):
        heatmap_from_raw(torch.zeros(3, 224, 224), geometry)


def test_raw_only_writes_no_map_on_original_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcam.models import load_model

    paths = _folder(tmp_path)[:2]
    calls = []
    real = outputs.maps_to_originals
    monkeypatch.setattr(outputs, "maps_to_originals", lambda *a: calls.append(1) or real(*a))
    settings = ExplainSettings(methods=("gradcam",), outputs=("raw",))
    run = {"batch_size": 2, "device": "cpu", "workers": 0, "writers": 0, "progress": False}
    summary = explain_files(paths, load_model(), settings, tmp_path / "out", **run)
    assert summary.done == 2 and calls == []
    for item in summary.items:
        (output,) = item["outputs"]
        assert output["heatmap"] is None and output["overlay"] is None and output["panel"] is None
        raw = Path(output["raw"])
        assert raw.name.endswith("_raw.npy") and np.load(raw).shape == (7, 7)
        assert sorted(p.name for p in raw.parent.iterdir()) == sorted(["item.json", raw.name])


def test_default_outputs_and_their_resume_key_are_unchanged_by_raw() -> None:
    assert ExplainSettings().outputs == ("overlay", "heatmap", "panel") == DEFAULT_OUTPUTS
    assert "outputs" not in ExplainSettings().key("m", "layer")  # outputs of earlier versions stay reusable
    with_raw = ExplainSettings(outputs=(*DEFAULT_OUTPUTS, "raw")).key("m", "layer")
    assert with_raw["outputs"] == ["overlay", "heatmap", "panel", "raw"]
    with pytest.raises(ValueError, match="outputs must be a non-empty subset of overlay, heatmap, panel, raw"):
        ExplainSettings(outputs=("raws",))
