"""What an ImageFolder tree holds, read from the tree itself: for `configs/imagefolder.py`.

Layouts: `DIR/train/<class>/…` with `DIR/val/<class>/…` (or `DIR/test/`), `DIR/train/<class>/…`
alone, or `DIR/<class>/…` alone. Classes are the sorted train folders; image size and channels
come from the images (the most common size, square or not: the shorter side); mean and std per
channel from a class-balanced sample of training images at that size.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
from PIL import Image

from sre2l_jax.data.sources import ImageFolderSource, list_class_folders
from sre2l_jax.data.splits import balanced_prefix
from sre2l_jax.data.transforms import EvalResize

EVAL_SPLITS = ("val", "test")
_MODES_1 = ("1", "L", "I", "I;16", "F")


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    root: str
    train_split: str  # "" when the class folders sit in the root
    eval_split: str  # "" when there is none: the config holds out a fraction of train
    class_names: tuple
    image_size: int
    channels: int


def inspect(root: str, sample: int = 64) -> FolderInfo:
    """The tree's layout, classes, and its images' usual size and channel count."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_dir {root!r} does not exist; point data_dir at an ImageFolder "
                                "tree (train/<class>/*.png, optionally val/<class>/*)")
    train = "train" if os.path.isdir(os.path.join(root, "train")) else ""
    evals = [s for s in EVAL_SPLITS if train and os.path.isdir(os.path.join(root, s))]
    classes = list_class_folders(os.path.join(root, train))
    if not classes:
        raise ValueError(f"{root} has no class folders (expected {root}/train/<class>/ or {root}/<class>/)")
    source = ImageFolderSource(root, train, channels=3)
    empty = sorted(set(classes) - set(source.class_names))
    if empty:
        raise ValueError(f"{os.path.join(root, train)}: class folders without images {empty[:5]}"
                         f"{' …' if len(empty) > 5 else ''}; add images or remove the folders")
    sizes, modes = collections.Counter(), collections.Counter()
    for path in source.paths[:: max(1, len(source.paths) // sample)]:
        with Image.open(path) as im:
            sizes[min(im.size)] += 1
            modes[1 if im.mode in _MODES_1 else 3] += 1
    return FolderInfo(root, train, evals[0] if evals else "", tuple(classes),
                      sizes.most_common(1)[0][0], modes.most_common(1)[0][0])


def mean_std(info: FolderInfo, channels: int, size: int, sample: int = 2000) -> tuple[tuple, tuple]:
    """Per-channel mean and std of pixel/255 over a class-balanced sample of training images."""
    source = balanced_prefix(ImageFolderSource(info.root, info.train_split, channels=channels), sample)
    fit = EvalResize(size, size)
    pixels = np.concatenate([fit.map(source[i])["image"].reshape(-1, channels) for i in range(len(source))])
    pixels = pixels.astype(np.float64) / 255.0
    return tuple(round(float(m), 4) for m in pixels.mean(0)), tuple(round(float(s), 4) for s in pixels.std(0))
