"""What decoding a large JPEG costs, in full and with libjpeg's DCT scaling (PIL's ``draft``).

    python benchmarks/decode_scale.py --size 4032x3024 --repeats 5

One thread; one JPEG (quality 90) made from a bundled photo at ``--size``; mean ms of ``--repeats``
calls after one warm-up. The rows: TorchCodec's full-size decode (what a job uses for JPEGs), PIL's,
PIL's with ``draft`` to 1/2, 1/4 and 1/8 of the size, and torch's antialiased resize of the full-size
pixels to a 256-pixel shorter side (what a job does next).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gradcam.assets import sample_names, sample_path
from gradcam.imaging import io as image_io
from gradcam.imaging.geometry import resized_size_for


def mean_ms(function: Callable[[], object], repeats: int) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4032x3024", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, height = (int(side) for side in args.size.lower().split("x"))
    photo = Image.open(sample_path(sample_names()[0])).convert("RGB").resize((width, height))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    print(f"one {width} x {height} JPEG ({len(data) / 1e6:.2f} MB), one thread, mean of {args.repeats} calls")
    print("| step | ms |")
    print("|---|---|")
    decode = image_io._jpeg_decoder()
    if decode is not None:
        ms = mean_ms(lambda: decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB"), args.repeats)
        print(f"| TorchCodec, full size | {ms:.1f} |")

    def pil(scale: int) -> Image.Image:
        opened = Image.open(io.BytesIO(data))
        if scale > 1:
            opened.draft("RGB", (width // scale, height // scale))
        opened.load()
        return opened

    for scale in (1, 2, 4, 8):
        decoded_w, decoded_h = pil(scale).size
        what = "PIL, full size" if scale == 1 else f"PIL with draft to 1/{scale} ({decoded_w} x {decoded_h})"
        print(f"| {what} | {mean_ms(lambda s=scale: pil(s), args.repeats):.1f} |")
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1).unsqueeze(0)
    resized_w, resized_h = resized_size_for((width, height), 256)
    resize = lambda: F.interpolate(pixels, size=(resized_h, resized_w), mode="bicubic", antialias=True)  # noqa: E731
    print(f"| antialiased bicubic resize of the full-size pixels to {resized_w} x {resized_h} | "
          f"{mean_ms(resize, args.repeats):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
