"""RandAugment: every operation against a NumPy computation of torchvision's definition; the plan
draws it per image and replays it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sre2l_jax import randaugment as ra
from sre2l_jax.student import plans

H = W = 10


@pytest.fixture(scope="module")
def image():
    """A 10×10 gray image with a bright off-centre block on a dark, noisy background."""
    rng = np.random.default_rng(0)
    im = rng.integers(0, 40, (H, W, 1)).astype(np.float32)
    im[2:6, 1:5] = rng.integers(150, 250, (4, 4, 1))
    return im


def _one(image, name, negative=False, magnitude=9):
    op = np.asarray([[ra.OPS.index(name)]], np.int32)
    out = jax.jit(ra.apply, static_argnums=3)(image[None], op, np.asarray([[negative]]), magnitude)
    return np.asarray(out[0])


def _nearest(image, src_x, src_y):
    """NumPy reference: out[y, x] = image[src_y, src_x] rounded, 0 outside."""
    ix, iy = np.round(src_x).astype(int), np.round(src_y).astype(int)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    out = np.zeros_like(image)
    out[inside] = image[iy[inside], ix[inside]]
    return out


def test_magnitudes_are_torchvisions_at_bin_9():
    m = ra.magnitudes(9, 28, 28)
    assert m["shear_x"] == pytest.approx(0.09) and m["rotate"] == pytest.approx(9.0)
    assert m["translate_x"] == pytest.approx(150 / 331 * 28 * 0.3) and m["brightness"] == pytest.approx(0.27)
    assert m["posterize"] == 7.0 and m["solarize"] == pytest.approx(178.5)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        ra.magnitudes(31, 28, 28)


def test_geometric_operations_sample_the_nearest_source_pixel(image):
    ys, xs = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    m = ra.magnitudes(20, H, W)
    np.testing.assert_array_equal(_one(image, "translate_x", magnitude=20),
                                  _nearest(image, xs - int(m["translate_x"]), ys))
    np.testing.assert_array_equal(_one(image, "translate_y", True, magnitude=20),
                                  _nearest(image, xs, ys + int(m["translate_y"])))
    np.testing.assert_array_equal(_one(image, "shear_x", magnitude=20),
                                  _nearest(image, xs + m["shear_x"] * ys, ys))
    np.testing.assert_array_equal(_one(image, "shear_y", True, magnitude=20),
                                  _nearest(image, xs, ys - m["shear_y"] * xs))
    a, c = np.deg2rad(m["rotate"]), (W - 1) / 2
    np.testing.assert_array_equal(
        _one(image, "rotate", magnitude=20),
        _nearest(image, np.cos(a) * (xs - c) - np.sin(a) * (ys - c) + c,
                 np.sin(a) * (xs - c) + np.cos(a) * (ys - c) + c))
    assert np.any(_one(image, "rotate", magnitude=20) != image)


def test_color_operations_match_their_definitions(image):
    f = 1 + ra.magnitudes(9, H, W)["brightness"]
    np.testing.assert_array_equal(_one(image, "identity"), image)
    np.testing.assert_array_equal(_one(image, "color"), image)  # gray: its own grayscale
    np.testing.assert_array_equal(_one(image, "brightness"), np.clip(np.round(image * f), 0, 255))
    np.testing.assert_array_equal(_one(image, "brightness", True),
                                  np.clip(np.round(image * (2 - f)), 0, 255))
    mean = image.mean()
    np.testing.assert_allclose(_one(image, "contrast"),
                               np.clip(np.round(mean + f * (image - mean)), 0, 255), atol=1)
    np.testing.assert_array_equal(_one(image, "posterize"), np.floor(image / 2) * 2)  # 7 bits
    np.testing.assert_array_equal(_one(image, "solarize"), np.where(image >= 178.5, 255 - image, image))
    lo, hi = image.min(), image.max()
    np.testing.assert_allclose(_one(image, "autocontrast"),
                               np.round((image - lo) * 255 / (hi - lo)), atol=1)


def test_sharpness_blends_with_the_smoothed_interior(image):
    f = 1 + ra.magnitudes(9, H, W)["sharpness"]
    kernel = np.ones((3, 3)) / 13
    kernel[1, 1] = 5 / 13
    blurred = image.copy()
    for y in range(1, H - 1):
        for x in range(1, W - 1):
            blurred[y, x] = np.round(np.sum(image[y - 1:y + 2, x - 1:x + 2, 0] * kernel))
    want = np.clip(np.round(blurred + f * (image - blurred)), 0, 255)
    np.testing.assert_allclose(_one(image, "sharpness"), want, atol=1)
    np.testing.assert_array_equal(_one(image, "sharpness")[0], image[0])  # the border stays


def test_equalize_is_pils_histogram_equalization():
    # Equalization needs more pixels than gray levels (else its step is 0 and nothing changes).
    image = np.random.default_rng(1).integers(0, 120, (24, 24, 1)).astype(np.float32)
    v = image[..., 0].astype(int)
    hist = np.bincount(v.ravel(), minlength=256)
    step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
    lut = np.concatenate([[0], ((np.cumsum(hist) + step // 2) // step)[:-1]]).clip(0, 255)
    assert step > 0
    np.testing.assert_array_equal(_one(image, "equalize")[..., 0], lut[v])
    flat = np.full((24, 24, 1), 7.0, np.float32)  # one gray level: step 0, unchanged
    np.testing.assert_array_equal(_one(flat, "equalize"), flat)


def test_plans_draw_randaugment_per_image_and_replay_it(image):
    spec = plans.AugSpec(H, (0.5,), (0.25,), mix="none", randaugment=2)
    images = jnp.asarray(np.stack([image] * 6).astype(np.uint8))
    ids = jnp.asarray([0, 3, 1], jnp.int32)
    x, plan = plans.augmented(images, ids, spec)
    assert plan["ra_ops"].shape == (6, 2) and len(set(map(tuple, np.asarray(plan["ra_ops"])))) > 1
    replayed = plans.apply_plan(plans.to_input(images, plan, spec), plan, spec)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(replayed))
    off = plans.AugSpec(H, (0.5,), (0.25,), mix="none")
    x_off, plan_off = plans.augmented(images, ids, off)
    assert "ra_ops" not in plan_off
    # RandAugment adds its own draw: the crops and flips of the plan stay those without it.
    np.testing.assert_array_equal(np.asarray(plan_off["boxes"]), np.asarray(plan["boxes"]))
    assert not np.array_equal(np.asarray(x_off), np.asarray(x))
