"""The folder job on a CUDA device gives the CPU job's maps (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.assets import sample_names, sample_path
from gradcam.batch.loop import explain_files
from gradcam.batch.settings import ExplainSettings
from gradcam.imaging.geometry import PreprocessConfig, normalize_pixels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_normalising_on_the_device_gives_the_cpus_values():
    config = PreprocessConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    on_gpu = normalize_pixels(pixels.cuda(), config)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), normalize_pixels(pixels, config))


def test_a_cuda_job_with_decoding_processes_and_writer_threads_gives_the_cpu_jobs_maps(tmp_path: Path, monkeypatch):
    from gradcam.models import load_model

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as on the CPU
    paths = [sample_path(name) for name in sample_names()]  # photos: confident, well-separated top-1 classes
    rng = np.random.default_rng(0)
    paths.append(tmp_path / "noise.jpg")  # and a fifth image, so that batches of 2 end with a single one
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    loaded = load_model()
    settings = ExplainSettings(methods=("gradcam",), outputs=("raw", "heatmap"))
    cpu = explain_files(paths, loaded, settings, tmp_path / "cpu", batch_size=2, workers=0, writers=0,
                             progress=False)  # fmt: skip
    gpu = explain_files(paths, loaded, settings, tmp_path / "gpu", batch_size=2, device="cuda", workers=2,
                             writers=2, progress=False)  # fmt: skip
    assert cpu.done == gpu.done == 5
    for a, b in zip(cpu.items[:-1], gpu.items[:-1]):  # the noise image's top-1 may differ between devices
        assert a["input"] == b["input"] and a["targets"] == b["targets"]
        for kind in ("raw", "heatmap"):
            ours, theirs = np.load(a["outputs"][0][kind]), np.load(b["outputs"][0][kind])
            np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4 * float(np.abs(ours).max()))
