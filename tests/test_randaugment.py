"""RandAugment: every operation against torchvision's (and the geometric ones and equalize against
NumPy); the plan draws it per image and replays it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sre2l_jax import randaugment as ra
from sre2l_jax.student import plans

torch = pytest.importorskip("torch")
autoaugment = pytest.importorskip("torchvision.transforms.autoaugment")
InterpolationMode = pytest.importorskip("torchvision.transforms").InterpolationMode

_TORCHVISION = {"identity": "Identity", "shear_x": "ShearX", "shear_y": "ShearY",
                "translate_x": "TranslateX", "translate_y": "TranslateY", "rotate": "Rotate",
                "brightness": "Brightness", "color": "Color", "contrast": "Contrast",
                "sharpness": "Sharpness", "posterize": "Posterize", "solarize": "Solarize",
                "autocontrast": "AutoContrast", "equalize": "Equalize"}
_OURS = {v: k for k, v in _TORCHVISION.items()}

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


def test_magnitudes_are_torchvisions():
    space = autoaugment.RandAugment()._augmentation_space(ra.NUM_BINS, (28, 20))
    for magnitude in (0, 9, 17, 30):
        ours = ra.magnitudes(magnitude, 28, 20)
        for name, (bins, _) in space.items():
            if bins.ndim:
                assert ours[_OURS[name]] == float(bins[magnitude]), (name, magnitude)
    assert ra.magnitudes(9, 28, 28)["posterize"] == 7.0
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        ra.magnitudes(31, 28, 28)


@pytest.mark.parametrize("channels", [1, 3])
def test_operations_match_torchvision(channels):
    """Every operation, both signs, at magnitude 9 on 28×28 uint8 images of flat blocks and noise."""
    rng = np.random.default_rng(channels)
    images = rng.integers(0, 60, (4, 28, 28, channels)).astype(np.uint8)
    images[:, 4:14, 6:20] = rng.integers(150, 250, (4, 1, 1, channels))  # flat: blends' exact cases
    space = autoaugment.RandAugment()._augmentation_space(ra.NUM_BINS, (28, 28))
    cases = [(name, neg) for name in ra.OPS for neg in (False, True) if not neg or name in ra.SIGNED]
    ops = np.repeat([[ra.OPS.index(n)] for n, _ in cases], len(images), 0).astype(np.int32)
    signs = np.repeat([[neg] for _, neg in cases], len(images), 0)
    ours = jax.jit(ra.apply, static_argnums=3)(np.tile(images, (len(cases), 1, 1, 1)).astype(np.float32),
                                              ops, signs, 9)
    ours = np.asarray(ours).reshape(len(cases), *images.shape)
    for (name, negative), got in zip(cases, ours):
        bins, _ = space[_TORCHVISION[name]]
        m = float(bins[9]) if bins.ndim else 0.0
        want = np.stack([autoaugment._apply_op(torch.from_numpy(im.transpose(2, 0, 1).copy()),
                                               _TORCHVISION[name], -m if negative else m,
                                               InterpolationMode.NEAREST, None).numpy().transpose(1, 2, 0)
                         for im in images]).astype(np.float32)
        if name == "sharpness":  # one fused multiply-add where torchvision rounds twice (randaugment._blend)
            assert np.max(np.abs(got - want)) <= 1 and np.mean(got != want) < 0.01, name
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} negative={negative}")
        if name != "identity" and not (name == "color" and channels == 1):
            assert np.any(got != images), name  # every operation does something here


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
