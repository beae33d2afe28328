"""Per-record NumPy image transforms as Grain transforms (records are `{'image', 'label', ...}`).

Geometry works on uint8 HxWxC and keeps the channel count; `Normalize` is last and also accepts a
batch [B,H,W,C]. Random transforms draw only from the Grain-provided generator so that a record's
augmentation is a function of the pipeline seed and the record's position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

Record = dict[str, Any]


def _with_image(record: Record, image: np.ndarray) -> Record:
    out = dict(record)
    out["image"] = image
    return out


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 HxWxC to `size` = (height, width) with PIL (torchvision's path)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if image.shape[-1] == 3:
        out = Image.fromarray(np.ascontiguousarray(image), "RGB").resize((width, height),
                                                                          Image.BILINEAR)
        return np.asarray(out)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "L")
                           .resize((width, height), Image.BILINEAR))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


class Normalize(grain.transforms.Map):
    """uint8 → float32 `(x/255 - mean) / std` per channel; works per record or per batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean {mean} and std {std} must be equal-length sequences")
        # One multiply-add per pixel instead of divide, subtract, divide.
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std

    def map(self, element: Record) -> Record:
        image = element["image"]
        if image.shape[-1] != self.scale.shape[0]:
            raise ValueError(f"image has {image.shape[-1]} channels but mean/std have "
                             f"{self.scale.shape[0]}; fix data.mean/data.std")
        return _with_image(element, image.astype(np.float32) * self.scale - self.shift)


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirror left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        if rng.random() < self.p:
            return _with_image(element, element["image"][:, ::-1])
        return element


class RandomCrop(grain.transforms.RandomMap):
    """torchvision `RandomCrop(size, padding)`: zero-pad every side, then crop size x size."""

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        image = element["image"]
        h, w, c = image.shape
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"cannot crop {s}x{s} from {h}x{w} padded by {p}")
        top = int(rng.integers(0, h + 2 * p - s + 1))
        left = int(rng.integers(0, w + 2 * p - s + 1))
        # Copy only the overlap with the real image instead of materialising the padded image.
        out = np.zeros((s, s, c), dtype=image.dtype)
        y0, y1 = max(top, p), min(top + s, p + h)
        x0, x1 = max(left, p), min(left + s, p + w)
        if y0 < y1 and x0 < x1:
            out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0 - p:y1 - p, x0 - p:x1 - p]
        return _with_image(element, out)


def rrc_params(rng: np.random.Generator, height: int, width: int,
               scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params`: (top, left, h, w) of the crop box."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Ten misses: the largest centred box whose aspect ratio is inside `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop(grain.transforms.RandomMap):
    """torchvision `RandomResizedCrop(size, scale, ratio)` with bilinear resize."""

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        image = element["image"]
        top, left, h, w = rrc_params(rng, image.shape[0], image.shape[1], self.scale, self.ratio)
        crop = image[top:top + h, left:left + w]
        return _with_image(element, resize_image(crop, (self.size, self.size)))


class EvalResize(grain.transforms.Map):
    """Resize the shorter side to `resize` then center-crop `size`; `resize=0`: resize to size.

    Images already `size` x `size` pass through untouched when `resize` is 0 or `size`.
    """

    def __init__(self, size: int, resize: int = 0):
        self.size, self.resize = size, resize

    def map(self, element: Record) -> Record:
        image = element["image"]
        h, w = image.shape[:2]
        if not self.resize:
            return _with_image(element, resize_image(image, (self.size, self.size)))
        # torchvision Resize(int): shorter side to `resize`, longer side truncated proportionally.
        if h <= w:
            new_h, new_w = self.resize, int(self.resize * w / h)
        else:
            new_h, new_w = int(self.resize * h / w), self.resize
        image = resize_image(image, (new_h, new_w))
        if new_h < self.size or new_w < self.size:
            raise ValueError(f"eval_resize {self.resize} is smaller than image_size {self.size}")
        top = round((new_h - self.size) / 2.0)
        left = round((new_w - self.size) / 2.0)
        return _with_image(element, image[top:top + self.size, left:left + self.size])


class Chain(grain.transforms.RandomMap):
    """Apply transforms in order, feeding one generator through all random ones.

    One Grain `random_map` per record (rather than one per transform) is both cheaper and avoids
    giving two transforms generators seeded identically, which would correlate their draws.
    """

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        for t in self.transforms:
            if isinstance(t, grain.transforms.RandomMap):
                element = t.random_map(element, rng)
            else:
                element = t.map(element)
        return element


def train_transforms(augment: str, image_size: int, crop_padding: int = 4,
                     eval_resize: int = 0) -> list[Any]:
    """The uint8 geometry for a `data.train_augment` mode (normalization not included).

    Modes other than rrc_flip first bring images to image_size the way evaluation does, so that
    variable-size folders still batch.
    """
    fit = EvalResize(image_size, eval_resize)
    if augment == "none":
        return [fit]
    if augment == "flip":
        return [fit, RandomHorizontalFlip()]
    if augment == "crop_flip":
        return [fit, RandomCrop(image_size, crop_padding), RandomHorizontalFlip()]
    if augment == "rrc_flip":
        return [RandomResizedCrop(image_size), RandomHorizontalFlip()]
    raise ValueError(f"train_augment must be none, flip, crop_flip or rrc_flip, got {augment!r}")
