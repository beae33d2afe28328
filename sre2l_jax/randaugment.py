"""RandAugment (Cubuk et al., 2020) on device, with torchvision's operations and magnitudes.

EDC's student applies `torchvision.transforms.RandAugment()` (2 operations per image, magnitude 9
of 31 bins) to each image before RandomResizedCrop. Here an image's operations and signs are drawn
into the batch plan (`sample`), so stored labels replay them, and `apply` runs them on pixel values
in [0, 255], truncating to integers after each operation as torchvision's uint8 images do. Geometric
operations sample the nearest pixel and fill with 0, as torchvision's defaults do.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
NUM_BINS = 31
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                    "color", "contrast", "sharpness"})  # torchvision negates these half the time
BLENDS = ("brightness", "color", "contrast", "sharpness")  # blend with a degenerate image by 1 + m


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: start + i·step up to half way, end − (steps − 1 − i)·step after."""
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps, dtype=np.float32)
    return np.where(i < steps // 2, start32 + step * i, end32 - step * (np.float32(steps - 1) - i))


def magnitudes(magnitude: int, height: int, width: int) -> dict[str, float]:
    """Each operation's strength at bin `magnitude` of NUM_BINS: torchvision's augmentation space,
    float32 bins as torch.linspace gives them."""
    if not 0 <= magnitude < NUM_BINS:
        raise ValueError(f"student.randaugment_magnitude must be in [0, {NUM_BINS - 1}], got {magnitude}")
    at = lambda start, end: float(_linspace_f32(start, end, NUM_BINS)[magnitude])
    return {"shear_x": at(0.0, 0.3), "shear_y": at(0.0, 0.3),
            "translate_x": at(0.0, 150.0 / 331.0 * width), "translate_y": at(0.0, 150.0 / 331.0 * height),
            "rotate": at(0.0, 30.0), **{k: at(0.0, 0.9) for k in BLENDS},
            "posterize": float(8 - round(magnitude / ((NUM_BINS - 1) / 4))), "solarize": at(255.0, 0.0)}


def sample(key: jax.Array, n: int, num_ops: int) -> dict:
    """Per image, `num_ops` operations drawn uniformly from OPS and a sign for each."""
    k_op, k_sign = jax.random.split(key)
    return {"ra_ops": jax.random.randint(k_op, (n, num_ops), 0, len(OPS)).astype(jnp.int32),
            "ra_signs": jax.random.bernoulli(k_sign, 0.5, (n, num_ops))}


def apply(images: jax.Array, ops: jax.Array, signs: jax.Array, magnitude: int) -> jax.Array:
    """images float32 NHWC with values in [0, 255]; ops int32 (N, k); signs bool (N, k)."""
    mags = magnitudes(magnitude, images.shape[1], images.shape[2])

    def argument(name, negative):
        m = mags.get(name, 0.0)
        if name in BLENDS:  # torchvision's blend weights: 1 ± m and 1 − (1 ± m) in double, then float32
            return (jnp.where(negative, np.float32(1 - m), np.float32(1 + m)),
                    jnp.where(negative, np.float32(1 - (1 - m)), np.float32(1 - (1 + m))))
        return jnp.where(negative, -m, m) if name in SIGNED else m

    branches = [lambda im, neg, name=name: _OPS[name](im, argument(name, neg)) for name in OPS]

    def one(image, image_ops, image_signs):
        for op, negative in zip(image_ops, image_signs):
            image = jnp.floor(jnp.clip(jax.lax.switch(op, branches, image, negative), 0.0, 255.0))
        return image

    return jax.vmap(one)(images, ops, signs)


def _affine_nearest(image: jax.Array, inverse: list, center: tuple) -> jax.Array:
    """out[y, x] = image[inverse · (x − cx, y − cy) + (cx, cy)], nearest pixel, 0 outside."""
    h, w = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    dx, dy = xs - center[0], ys - center[1]
    src_x = inverse[0][0] * dx + inverse[0][1] * dy + inverse[0][2] + center[0]
    src_y = inverse[1][0] * dx + inverse[1][1] * dy + inverse[1][2] + center[1]
    ix, iy = jnp.round(src_x).astype(jnp.int32), jnp.round(src_y).astype(jnp.int32)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    picked = image[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
    return jnp.where(inside[..., None], picked, 0.0)


def _shear_x(image, m):  # torchvision: affine with shear atan(m) about the top-left corner
    return _affine_nearest(image, [[1.0, m, 0.0], [0.0, 1.0, 0.0]], (0.0, 0.0))


def _shear_y(image, m):
    return _affine_nearest(image, [[1.0, 0.0, 0.0], [m, 1.0, 0.0]], (0.0, 0.0))


def _translate_x(image, m):  # whole pixels: torchvision passes int(magnitude)
    return _affine_nearest(image, [[1.0, 0.0, -jnp.trunc(m)], [0.0, 1.0, 0.0]], (0.0, 0.0))


def _translate_y(image, m):
    return _affine_nearest(image, [[1.0, 0.0, 0.0], [0.0, 1.0, -jnp.trunc(m)]], (0.0, 0.0))


def _rotate(image, degrees):
    """Counter-clockwise by `degrees` about the image centre (torchvision's F.rotate)."""
    a = degrees * (math.pi / 180.0)
    c, s = jnp.cos(a), jnp.sin(a)
    h, w = image.shape[:2]
    return _affine_nearest(image, [[c, -s, 0.0], [s, c, 0.0]], ((w - 1) / 2, (h - 1) / 2))


def _gray(image):  # torchvision's rgb_to_grayscale on uint8: weighted sum, truncated
    return jnp.floor(image @ jnp.asarray([0.2989, 0.587, 0.114], jnp.float32)[:, None])


def _blend(image, other, weights):
    """torchvision: factor·image + (1 − factor)·other in float32. XLA fuses this into one
    multiply-add, which keeps an exact 1.27·218 − 0.27·218 at 218 where torchvision's two rounded
    products truncate to 217: at most 1 gray level on ~0.2 % of sharpness's pixels."""
    factor, complement = weights
    return jnp.clip(factor * image + complement * other, 0.0, 255.0)


def _brightness(image, weights):
    return _blend(image, jnp.zeros_like(image), weights)


def _color(image, weights):  # saturation; torchvision returns a 1-channel image unchanged
    return image if image.shape[-1] == 1 else _blend(image, _gray(image), weights)


def _contrast(image, weights):
    return _blend(image, jnp.mean(image if image.shape[-1] == 1 else _gray(image)), weights)


def _sharpness(image, weights):
    """Blend with the 3×3 smoothed image (centre weight 5 of 13); border pixels stay (torchvision)."""
    kernel = jnp.ones((3, 3), jnp.float32).at[1, 1].set(5.0) / 13.0
    h, w = image.shape[:2]
    windows = [image[i:i + h - 2, j:j + w - 2] * kernel[i, j] for i in range(3) for j in range(3)]
    smooth = jnp.round(sum(windows))
    blurred = image.at[1:-1, 1:-1].set(smooth)
    return _blend(image, blurred, weights)


def _posterize(image, bits):
    step = 2.0 ** (8.0 - bits)
    return jnp.floor(image / step) * step


def _solarize(image, threshold):
    return jnp.where(image >= threshold, 255.0 - image, image)


def _autocontrast(image, _):
    lo, hi = image.min(axis=(0, 1)), image.max(axis=(0, 1))
    # torchvision's 255 / (hi − lo) is torch's reciprocal(hi − lo) · 255: not always the same float.
    scale = jnp.where(hi > lo, (1.0 / jnp.maximum(hi - lo, 1e-6)) * 255.0, 1.0)
    return jnp.where(hi > lo, (image - lo) * scale, image)


def _equalize(image, _):
    """Per channel, torchvision's histogram equalization (the PIL algorithm)."""
    def channel(values):
        v = values.astype(jnp.int32)
        hist = jnp.bincount(v.ravel(), length=256)
        last = hist[jnp.max(jnp.where(hist > 0, jnp.arange(256), 0))]
        step = (jnp.sum(hist) - last) // 255
        lut = (jnp.cumsum(hist) + step // 2) // jnp.maximum(step, 1)
        lut = jnp.clip(jnp.concatenate([jnp.zeros(1, lut.dtype), lut[:-1]]), 0, 255)
        return jnp.where(step == 0, values, lut[v].astype(jnp.float32))

    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)


_OPS = {"identity": lambda im, _: im, "shear_x": _shear_x, "shear_y": _shear_y,
        "translate_x": _translate_x, "translate_y": _translate_y, "rotate": _rotate,
        "brightness": _brightness, "color": _color, "contrast": _contrast, "sharpness": _sharpness,
        "posterize": _posterize, "solarize": _solarize, "autocontrast": _autocontrast,
        "equalize": _equalize}
