"""Compare two ``gradcam explain`` output folders: every .npy byte for byte, every PNG's decoded pixels.

    python scripts/compare_outputs.py OLD_OUT NEW_OUT

Exit code 0 when both hold the same .npy and .png files (same relative paths) and all of them agree;
PNG bytes may differ (another encoder or level), their pixels may not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` hold the same .npy bytes or the same decoded PNG pixels (mode and size too)."""
    if a.suffix == ".npy":
        return a.read_bytes() == b.read_bytes()
    x, y = Image.open(a), Image.open(b)
    return x.mode == y.mode and x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y))


def main() -> int:
    old, new = Path(sys.argv[1]), Path(sys.argv[2])
    names = {p.relative_to(old) for p in old.rglob("*") if p.suffix in (".npy", ".png")}
    others = {p.relative_to(new) for p in new.rglob("*") if p.suffix in (".npy", ".png")}
    for name in sorted(names ^ others):
        print(f"only in {'the first' if name in names else 'the second'}: {name}")
    different = [name for name in sorted(names & others) if not same(old / name, new / name)]
    for name in different:
        print(f"different: {name}")
    print(f"{len(names & others)} files compared, {len(different)} different, {len(names ^ others)} unmatched")
    return 1 if different or names ^ others or not names else 0


if __name__ == "__main__":
    sys.exit(main())
