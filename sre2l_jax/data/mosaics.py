"""Mosaics: f × f smaller images in one stored image — RDED's stitching and IDC's multi-formation.

With `student.multi_formation = f > 1` the student reads every stored image as a mosaic of f × f
cells (RDED's stitching geometry, `recover.rded_factor`: row-major, a cell size // f pixels, the
first size % f rows and columns one more) and trains on each cell, resized (bilinear) back to the
full size, as an image of the mosaic's class: IPC stored images become IPC·f² images at 1/f of
the resolution, in the same pixels on disk. The random real baselines get the same format — f²
random real images stitched into each stored image, then decoded — so a method's IOR measures
its choice of images, not the format.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sre2l_jax.data.sources import source_labels
from sre2l_jax.data.transforms import EvalResize, resize_image


def cell_sizes(size: int, factor: int) -> list[int]:
    """Rows (or columns) of each grid cell: size // f, the first size % f of them one more."""
    base, extra = divmod(size, factor)
    return [base + (1 if i < extra else 0) for i in range(factor)]


def stitch(patches: list[np.ndarray], size: int, factor: int) -> np.ndarray:
    """f × f uint8 patches (row-major) → one size × size image, each patch resized to its cell."""
    sizes = cell_sizes(size, factor)
    rows = []
    for r, h in enumerate(sizes):
        row = [resize_image(patches[r * factor + j], (h, w)) for j, w in enumerate(sizes)]
        rows.append(np.concatenate([p if p.ndim == 3 else p[..., None] for p in row], axis=1))
    return np.concatenate(rows, axis=0)


def check_factor(factor: int, image_size: int) -> None:
    if not 1 <= factor <= image_size:
        raise ValueError(f"student.multi_formation={factor} must be between 1 (off) and the image "
                         f"size {image_size}")


def cell(mosaic: np.ndarray, j: int, factor: int) -> np.ndarray:
    """Cell j (row-major) of an f × f mosaic [H, W, C], at its stored size."""
    rows, cols = cell_sizes(mosaic.shape[0], factor), cell_sizes(mosaic.shape[1], factor)
    r, c = divmod(j, factor)
    top, left = sum(rows[:r]), sum(cols[:c])
    return mosaic[top:top + rows[r], left:left + cols[c]]


class Decoded:
    """`source`'s mosaics as f² images each: item i is cell i % f² of mosaic i // f², resized to
    size × size, with the mosaic's label."""

    def __init__(self, source: Any, factor: int, size: int):
        check_factor(factor, size)
        self.source, self.factor, self.cells = source, factor, factor * factor
        self.fit = EvalResize(size, size)  # as the student pipeline fits an image (no squash)
        self.labels = np.repeat(source_labels(source), self.cells)
        self.class_names = list(source.class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.source) * self.cells

    def __getitem__(self, i: int) -> dict:
        k, j = divmod(int(i), self.cells)
        mosaic = np.asarray(self.fit.map(self.source[k])["image"])
        return {"image": resize_image(cell(mosaic, j, self.factor), mosaic.shape[:2]),
                "label": int(self.labels[i])}


class Stitched:
    """`source` (f² consecutive images of one class per mosaic) as size × size mosaics."""

    def __init__(self, source: Any, factor: int, size: int):
        check_factor(factor, size)
        labels, cells = source_labels(source), factor * factor
        if len(labels) % cells or np.any(labels.reshape(-1, cells) != labels[::cells, None]):
            raise ValueError(f"multi-formation: {len(labels)} images do not split into mosaics of "
                             f"{cells} images of one class each")
        self.source, self.factor, self.size, self.cells = source, factor, size, cells
        self.fit = EvalResize(size, size)  # as the student pipeline fits an image (no squash)
        self.labels = labels[::cells]
        self.class_names = list(source.class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int) -> dict:
        patches = [np.asarray(self.fit.map(self.source[int(k) * self.cells + j])["image"])
                   for j in range(self.cells)]
        return {"image": stitch(patches, self.size, self.factor), "label": int(self.labels[k])}


def decoded(source: Any, factor: int, size: int) -> Any:
    """What the student trains on when `source` holds mosaics: `source` itself at f = 1."""
    return source if factor == 1 else Decoded(source, factor, size)


def stitched(source: Any, factor: int, size: int) -> Any:
    """Real images as they would be stored under multi-formation: `source` itself at f = 1."""
    return source if factor == 1 else Stitched(source, factor, size)
