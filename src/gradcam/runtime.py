"""Process-level settings that the command-line tool applies to its own process (never the library).

glibc's allocator serves large blocks (the activations of a CNN batch) by ``mmap`` and returns them to
the operating system when they are freed, so every forward pass page-faults its activations in again
(the kernel zeroes each page). Measured here (2 cores, EfficientNet-Lite0, batch 16): 0.55 s per
inference forward with glibc's defaults, 0.23 s once freed blocks are kept for reuse. The peer
libraries and our explainers profit alike; only the retained memory (up to the trim threshold) stays
in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 512 << 20


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Ask glibc to serve blocks below ``mmap_threshold`` bytes from its heap and to give memory back to
    the system only above ``trim_threshold`` free bytes (``mallopt(M_MMAP_THRESHOLD)``,
    ``mallopt(M_TRIM_THRESHOLD)``). True if both took effect; False off glibc (macOS, Windows, musl)
    or when ``GRADCAM_KEEP_FREED_MEMORY=0``. Forked workers inherit the setting."""
    if os.environ.get("GRADCAM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
