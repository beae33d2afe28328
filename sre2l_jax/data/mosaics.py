"""Formations: several images in one stored image — RDED's stitching, IDC's multi-formation and
bit planes.

With `student.multi_formation = f > 1` the student reads every stored image as a mosaic of f × f
cells (RDED's stitching geometry, `recover.rded_factor`: row-major, a cell size // f pixels, the
first size % f rows and columns one more) and trains on each cell, resized (bilinear) back to the
full size, as an image of the mosaic's class: IPC stored images become IPC·f² images at 1/f of
the resolution, in the same pixels on disk. The random real baselines get the same format — f²
random real images stitched into each stored image, then decoded — so a method's IOR measures
its choice of images, not the format.

With `student.bit_depth = b < 8` every stored 8-bit pixel holds the pixels of k = 8 / b images,
each quantized to b bits (levels round(x · L / 255), L = 2^b − 1; image 0 in the high bits, so the
stored image looks like image 0 at b bits): IPC stored images become IPC·k images at b bits, in
the same bytes. Decoding gives level q the value q · 255 / L (exact: L divides 255). Bit planes
and mosaics combine: a stored image's plane p is itself a mosaic when f > 1 (item
(s·k + p)·f² + j). Packed images must be stored losslessly at the image size: resizing or JPEG
would mix the planes.
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


def group_labels(source: Any, per_group: int, format_name: str, group_name: str) -> np.ndarray:
    """The class of each run of `per_group` consecutive images of `source` (the images one stored
    image will hold), which must all be of one class."""
    labels = source_labels(source)
    if len(labels) % per_group or np.any(labels.reshape(-1, per_group) != labels[::per_group, None]):
        raise ValueError(f"{format_name}: {len(labels)} images do not split into {group_name} of "
                         f"{per_group} images of one class each")
    return labels[::per_group]


class Stitched:
    """`source` (f² consecutive images of one class per mosaic) as size × size mosaics."""

    def __init__(self, source: Any, factor: int, size: int):
        check_factor(factor, size)
        self.source, self.factor, self.size, self.cells = source, factor, size, factor * factor
        self.fit = EvalResize(size, size)  # as the student pipeline fits an image (no squash)
        self.labels = group_labels(source, self.cells, "multi-formation", "mosaics")
        self.class_names = list(source.class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int) -> dict:
        patches = [np.asarray(self.fit.map(self.source[int(k) * self.cells + j])["image"])
                   for j in range(self.cells)]
        return {"image": stitch(patches, self.size, self.factor), "label": int(self.labels[k])}


BIT_DEPTHS = (8, 4, 2, 1)


def check_bits(bits: int, key: str = "student.bit_depth") -> None:
    if bits not in BIT_DEPTHS:
        raise ValueError(f"{key}={bits} must be one of {BIT_DEPTHS} (8: off; b packs 8 / b images "
                         "at b bits into each stored image)")


def quantize(image: np.ndarray, bits: int) -> np.ndarray:
    """uint8 pixels → their nearest of the 2^bits levels q (as uint8 level numbers 0..L)."""
    levels = (1 << bits) - 1
    return ((image.astype(np.int32) * levels + 127) // 255).astype(np.uint8)


def dequantize(levels_image: np.ndarray, bits: int) -> np.ndarray:
    """Level numbers → uint8 pixels q · 255 / L."""
    return (levels_image.astype(np.int32) * (255 // ((1 << bits) - 1))).astype(np.uint8)


def pack(images: list[np.ndarray], bits: int) -> np.ndarray:
    """8 / bits uint8 images of one shape → one uint8 image, image 0 in the highest bits."""
    if len(images) != 8 // bits:
        raise ValueError(f"{bits}-bit packing holds {8 // bits} images, got {len(images)}")
    out = np.zeros(images[0].shape, np.int32)
    for p, image in enumerate(images):
        out |= quantize(image, bits).astype(np.int32) << (bits * (8 // bits - 1 - p))
    return out.astype(np.uint8)


def unpack(stored: np.ndarray, plane: int, bits: int) -> np.ndarray:
    """Image `plane` of a packed uint8 image, dequantized."""
    shift = bits * (8 // bits - 1 - plane)
    return dequantize((stored.astype(np.int32) >> shift) & ((1 << bits) - 1), bits)


class Unpacked:
    """`source`'s packed images as 8 / bits images each: item i is plane i % k of image i // k."""

    def __init__(self, source: Any, bits: int, size: int):
        check_bits(bits)
        self.source, self.bits, self.size, self.planes = source, bits, size, 8 // bits
        self.labels = np.repeat(source_labels(source), self.planes)
        self.class_names = list(source.class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.source) * self.planes

    def __getitem__(self, i: int) -> dict:
        k, p = divmod(int(i), self.planes)
        stored = np.asarray(self.source[k]["image"])
        if stored.shape[:2] != (self.size, self.size):
            raise ValueError(f"a {self.bits}-bit packed image is {stored.shape[1]}×{stored.shape[0]}, "
                             f"not the image size {self.size}²: packed images are never resized "
                             "(it would mix their bit planes); store them at the image size")
        return {"image": unpack(stored, p, self.bits), "label": int(self.labels[i])}


class Packed:
    """`source` (8 / bits consecutive images of one class per stored image) packed into bit planes."""

    def __init__(self, source: Any, bits: int, size: int):
        check_bits(bits)
        self.source, self.bits, self.planes = source, bits, 8 // bits
        self.fit = EvalResize(size, size)  # as the student pipeline fits an image (no squash)
        self.labels = group_labels(source, self.planes, "bit planes", "stored images")
        self.class_names = list(source.class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int) -> dict:
        images = [np.asarray(self.fit.map(self.source[int(k) * self.planes + p])["image"])
                  for p in range(self.planes)]
        return {"image": pack(images, self.bits), "label": int(self.labels[k])}


def images_per_stored(factor: int, bits: int) -> int:
    """How many images the student reads from each stored image."""
    return factor * factor * (8 // bits)


def decoded(source: Any, factor: int, size: int, bits: int = 8) -> Any:
    """What the student trains on when `source` holds mosaics and/or bit planes: `source` itself
    at f = 1 and 8 bits."""
    planes = source if bits == 8 else Unpacked(source, bits, size)
    return planes if factor == 1 else Decoded(planes, factor, size)


def stitched(source: Any, factor: int, size: int, bits: int = 8) -> Any:
    """Real images as they would be stored under multi-formation and/or bit planes: `source`
    itself at f = 1 and 8 bits."""
    mosaics = source if factor == 1 else Stitched(source, factor, size)
    return mosaics if bits == 8 else Packed(mosaics, bits, size)
