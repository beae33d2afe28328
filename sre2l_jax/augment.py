"""On-device augmentation with jax.random, shared by recovery and the student step.

Boxes follow torchvision's RandomResizedCrop sampler (10 attempts, then the centre-crop fallback) so
that crop statistics match the authors' code; the crop is resized with antialiased bilinear
interpolation as torchvision does for tensors. Every function takes its key explicitly: the same key
gives the same augmentation on any device.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def rrc_box(key: jax.Array, height: int, width: int, scale=(0.08, 1.0), ratio=RATIO) -> jax.Array:
    """torchvision's RandomResizedCrop.get_params → int32 (top, left, h, w)."""
    k_area, k_ratio, k_i, k_j = jax.random.split(key, 4)
    area = height * width
    target_area = area * jax.random.uniform(k_area, (10,), minval=scale[0], maxval=scale[1])
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = jnp.exp(jax.random.uniform(k_ratio, (10,), minval=log_r[0], maxval=log_r[1]))
    w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(ok)
    any_ok = jnp.any(ok)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    h_sel = jnp.where(any_ok, h[first], fh)
    w_sel = jnp.where(any_ok, w[first], fw)
    u_i, u_j = jax.random.uniform(k_i), jax.random.uniform(k_j)
    top = jnp.where(any_ok, jnp.floor(u_i * (height - h_sel + 1)).astype(jnp.int32), (height - fh) // 2)
    left = jnp.where(any_ok, jnp.floor(u_j * (width - w_sel + 1)).astype(jnp.int32), (width - fw) // 2)
    return jnp.stack([top, left, h_sel, w_sel]).astype(jnp.int32)


def crop_resize(images: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """Crop (top, left, h, w) out of NHWC `images` and resize to size×size (bilinear, antialiased)."""
    box = box.astype(jnp.float32)
    scale = jnp.stack([size / box[2], size / box[3]])
    translation = -box[:2] * scale
    out_shape = (images.shape[0], size, size, images.shape[3])
    return jax.image.scale_and_translate(images, out_shape, (1, 2), scale, translation,
                                         method="linear", antialias=True)


def maybe_flip(images: jax.Array, flip: jax.Array) -> jax.Array:
    """Mirror along W where `flip` (scalar: whole batch; (N,): per image) is true."""
    flip = jnp.reshape(flip, flip.shape + (1,) * (images.ndim - flip.ndim))
    return jnp.where(flip, images[:, :, ::-1], images)


def roll(images: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """torch.roll(x, shifts=(dy, dx), dims=(H, W)) in NHWC."""
    return jnp.roll(images, (dy, dx), axis=(1, 2))


def per_image_crops(key: jax.Array, images: jax.Array, size: int, scale=(0.08, 1.0)):
    """Independent RandomResizedCrop + flip per image (the student's augmentation).

    Returns (augmented images, boxes int32 (N,4), flips bool (N,)) — the parameters are what
    `relabel` stores so that a later student replays exactly these crops.
    """
    n, h, w = images.shape[:3]
    k_box, k_flip = jax.random.split(key)
    boxes = jax.vmap(lambda k: rrc_box(k, h, w, scale))(jax.random.split(k_box, n))
    flips = jax.random.bernoulli(k_flip, 0.5, (n,))
    return apply_crops(images, boxes, flips, size), boxes, flips


def apply_crops(images: jax.Array, boxes: jax.Array, flips: jax.Array, size: int) -> jax.Array:
    cropped = jax.vmap(lambda im, b: crop_resize(im[None], b, size)[0])(images, boxes)
    return maybe_flip(cropped, flips)


def pad_crop_boxes(key: jax.Array, n: int, size: int, padding: int) -> jax.Array:
    """RandomCrop(size, padding) offsets as boxes (top, left, size, size) in unpadded pixels:
    top and left uniform in [-padding, padding] (torchvision's RandomCrop on the padded image)."""
    offsets = jax.random.randint(key, (n, 2), -padding, padding + 1)
    return jnp.concatenate([offsets, jnp.full((n, 2), size, offsets.dtype)], axis=1).astype(jnp.int32)


def shift_crops(images: jax.Array, boxes: jax.Array, padding: int, fill: jax.Array) -> jax.Array:
    """Crop each image at its box's (top, left) from the image padded with `fill` (per channel)."""
    size = images.shape[1]
    padded = jnp.pad(images - fill, ((0, 0), (padding, padding), (padding, padding), (0, 0))) + fill

    def one(im, box):
        return jax.lax.dynamic_slice(im, (box[0] + padding, box[1] + padding, 0),
                                     (size, size, im.shape[-1]))

    return jax.vmap(one)(padded, boxes)


def cutmix_box(key: jax.Array, height: int, width: int, lam: jax.Array) -> jax.Array:
    """The CutMix rectangle (y1, x1, y2, x2) for mixing ratio `lam` (timm/FKD convention)."""
    k_y, k_x = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    ch, cw = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, height)
    cx = jax.random.randint(k_x, (), 0, width)
    return jnp.stack([jnp.clip(cy - ch // 2, 0, height), jnp.clip(cx - cw // 2, 0, width),
                      jnp.clip(cy + ch // 2, 0, height), jnp.clip(cx + cw // 2, 0, width)])


def apply_cutmix(images: jax.Array, perm: jax.Array, box: jax.Array) -> jax.Array:
    """Paste the box from images[perm] into images (one box for the whole batch)."""
    h, w = images.shape[1:3]
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    inside = (ys >= box[0]) & (ys < box[2]) & (xs >= box[1]) & (xs < box[3])
    return jnp.where(inside[None, :, :, None], images[perm], images)


def cutmix_lambda(box: jax.Array, height: int, width: int) -> jax.Array:
    """The label weight of the original image after pasting `box` (area-corrected λ)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return 1.0 - area / (height * width)
