r"""A small real ImageFolder tree to try `configs/imagefolder.py` on: Fashion-MNIST as PNG files.

  python benchmarks/fashion_to_imagefolder.py --out=/tmp/fashion_tree [--train=200] [--val=50]

Writes OUT/train/<class>/<i>.png and OUT/val/<class>/<i>.png (28×28 gray) from the first --train /
--val images of each class of Debian's Fashion-MNIST IDX files.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sre2l_jax.data import sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=200, help="images per class")
    ap.add_argument("--val", type=int, default=50, help="images per class")
    args = ap.parse_args()
    names = [n.replace("/", "-").replace(" ", "_") for n in sources.FASHION_MNIST_CLASSES]
    for split, idx_split, n in (("train", "train", args.train), ("val", "test", args.val)):
        src = sources.IdxSource(sources.FASHION_MNIST_DIR, idx_split)
        for c, name in enumerate(names):
            folder = os.path.join(args.out, split, name)
            os.makedirs(folder, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(src.labels == c)[:n]):
                Image.fromarray(src.images[i][..., 0], "L").save(os.path.join(folder, f"{k}.png"))
    print(f"wrote {len(names)} classes × {args.train} train + {args.val} val images to {args.out}")


if __name__ == "__main__":
    main()
