"""Regenerate the built-in SST-2 sample in zoft/tasks/data/sst2/.

Usage: python zoft/tasks/data/make_sst2_sample.py [SRC_DIR] [OUT_DIR]

SRC_DIR holds the original GLUE files (default ./data/sst2). dev.tsv
is copied byte-for-byte. train.tsv is the header plus 2,000 rows of
train_full.tsv chosen as numpy RandomState(0).permutation(67349)[:2000], written
in original file order as the original bytes (GLUE format kept).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

SHA256 = {
    "train_full.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
}
NUM_TRAIN, SEED = 2000, 0


def read_verified(path: Path) -> bytes:
    """Read ``path`` and refuse anything but the documented original file."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[path.name]:
        sys.exit(f"{path}: sha256 {digest} is not the GLUE original {SHA256[path.name]}")
    return data


def main(src: Path, out: Path) -> None:
    """Write ``out/dev.tsv`` and ``out/train.tsv`` from the originals in ``src``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.tsv").write_bytes(read_verified(src / "dev.tsv"))
    header, *rows = read_verified(src / "train_full.tsv").splitlines(keepends=True)
    keep = np.sort(np.random.RandomState(SEED).permutation(len(rows))[:NUM_TRAIN])
    (out / "train.tsv").write_bytes(header + b"".join(rows[i] for i in keep))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0] if args else "data/sst2"),
         Path(args[1] if len(args) > 1 else Path(__file__).parent / "sst2"))
