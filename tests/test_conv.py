"""Winograd F(4×4, 3×3) against XLA's convolution, alone and inside the recovery step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomized_teacher, read_floats, recover_floats, tiny_config

from sre2l_jax import conv, models, recover
from sre2l_jax.recover import objective

DN = ("NHWC", "HWIO", "NHWC")


def _stock(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN,
                                        precision=jax.lax.Precision.HIGHEST)


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("size,cin,cout", [(1, 3, 5), (2, 4, 4), (5, 3, 8), (7, 16, 16), (8, 8, 3),
                                           (12, 5, 6), (14, 16, 8), (16, 3, 16)])
def test_winograd_conv_equals_direct_convolution(size, cin, cout):
    x = jax.random.normal(jax.random.key(0), (3, size, size + 1 if size > 4 else size, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
    kernels = conv.winograd_kernels(w)
    ours = lambda a, b: conv.winograd_conv2d(a, b, kernels)
    y, y_ref = ours(x, w), _stock(x, w)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 3e-5
    g = jax.random.normal(jax.random.key(2), y.shape)
    (dx, dw), (dx_ref, dw_ref) = jax.vjp(ours, x, w)[1](g), jax.vjp(_stock, x, w)[1](g)
    assert _rel(dx, dx_ref) < 3e-5
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


def test_conv_module_has_nn_conv_parameters():
    x = jnp.zeros((1, 8, 8, 3))
    ours = models.Conv(16, 3, 2).init(jax.random.key(0), x)
    flax_conv = nn.Conv(16, (3, 3), (2, 2), padding=[(1, 1), (1, 1)], use_bias=False,
                        kernel_init=models.conv_init).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_conv)
    np.testing.assert_array_equal(ours["params"]["kernel"], flax_conv["params"]["kernel"])
    y = models.Conv(16, 3, 2).apply(ours, jax.random.normal(jax.random.key(1), (2, 8, 8, 3)))
    y_ref = nn.Conv(16, (3, 3), (2, 2), padding=[(1, 1), (1, 1)], use_bias=False).apply(
        flax_conv, jax.random.normal(jax.random.key(1), (2, 8, 8, 3)))
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Winograd even for the tiny test convolutions (by default too small to pay off)."""
    monkeypatch.setenv("SRE2L_CONV", "winograd")
    monkeypatch.setattr(conv, "WINOGRAD_MIN_MACS", 0)


def test_winograd_kernels_cover_the_stride_one_3x3_convs_only(winograd_everywhere):
    model, variables = randomized_teacher()
    with_kernels = models.with_winograd_kernels(model, variables, (4, 12, 12, 1))
    cached = {"/".join(k.key for k in path[:-2])
              for path, _ in jax.tree_util.tree_leaves_with_path(with_kernels[models.WINOGRAD])}
    # _tiny: stem conv, layer1_0 conv1/conv2 (stride 1); layer2_0 conv1 and downsample are stride 2.
    assert cached == {"conv1", "layer1_0/conv1", "layer1_0/conv2", "layer2_0/conv2"}
    assert models.with_winograd_kernels(model, with_kernels, (4, 12, 12, 1)) is with_kernels


def test_winograd_only_where_it_pays_off(monkeypatch):
    monkeypatch.setenv("SRE2L_CONV", "winograd")
    model, variables = randomized_teacher()
    assert models.with_winograd_kernels(model, variables, (4, 12, 12, 1)) is variables  # too small
    assert conv.winograd_eligible((100, 32, 32, 64), (3, 3, 64, 64), 1)  # ResNet-18 32², batch 100
    # The Fashion-MNIST default's width-8 teacher: every conv is too small to pay for the transforms.
    assert not conv.winograd_eligible((100, 28, 28, 8), (3, 3, 8, 8), 1)
    assert not conv.winograd_eligible((100, 4, 4, 64), (3, 3, 64, 64), 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_MACS", 4 * 12 * 12 * 9 * 4 * 4)  # layer1 qualifies
    cached = models.with_winograd_kernels(model, variables, (4, 12, 12, 1))[models.WINOGRAD]
    assert set(cached) == {"layer1_0", "layer2_0"} and set(cached["layer2_0"]) == {"conv2"}
    assert not conv.winograd_eligible((100, 32, 32, 64), (3, 3, 64, 64), 2)
    assert not conv.winograd_eligible((100, 32, 32, 64), (1, 1, 64, 64), 1)


def test_winograd_mode_is_off_for_canonical_and_unknown_modes(monkeypatch):
    model, variables = randomized_teacher()
    monkeypatch.setenv("SRE2L_CONV", "canonical")
    monkeypatch.setattr(conv, "WINOGRAD_MIN_MACS", 0)
    assert models.with_winograd_kernels(model, variables, (4, 12, 12, 1)) is variables
    monkeypatch.setenv("SRE2L_CONV", "winogard")
    with pytest.raises(ValueError, match="SRE2L_CONV='winogard'"):
        conv.conv_mode()


def test_recovery_with_winograd_matches_the_direct_convolution(monkeypatch, winograd_everywhere):
    """Same loss and nearly the same images after 5 iterations; `canonical` is what it replaces."""
    model, variables = randomized_teacher()
    hp = objective.RecoverHParams(iterations=5, lr=0.1, image_size=12, mean=(0.5,), std=(0.25,))
    x = jax.random.normal(jax.random.key(3), (4, 12, 12, 1))
    labels = jnp.arange(4)

    def run(mode):
        monkeypatch.setenv("SRE2L_CONV", mode)
        return objective.run_iterations(x, objective.optimizer(hp).init(x), labels,
                                        jax.random.key(4), 0, 5, models=(model,),
                                        variables=(variables,), hp=hp)

    (wx, _, wm), (cx, _, cm) = run("winograd"), run("canonical")
    assert not np.array_equal(wx, cx)  # the Winograd path did run
    np.testing.assert_allclose(wx, cx, atol=1e-4)
    np.testing.assert_allclose(wm["loss"], cm["loss"], rtol=1e-5)


def test_bfloat16_recovery_compute(tmp_path, tiny_teacher, monkeypatch):
    """recover.compute_dtype=bfloat16: bf16 convs (never Winograd), float32 images near float32's."""
    monkeypatch.setattr(conv, "WINOGRAD_MIN_MACS", 0)
    assert not conv.winograd_eligible((4, 12, 12, 4), (3, 3, 4, 4), 1, jnp.bfloat16)
    ref = recover_floats(tmp_path / "f32", 1, tiny_teacher[2])
    c = tiny_config(teacher=tiny_teacher[2])
    c.recover.compute_dtype = "bfloat16"
    recover.run(c, str(tmp_path / "bf16"))
    bf16 = read_floats(tmp_path / "bf16")
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in bf16.values())
    # Adam's normalized steps turn bf16 noise on tiny gradients into lr-sized pixel moves, so the
    # mean (not the max) difference is what stays small.
    diff = float(np.mean([np.mean(np.abs(bf16[k] - ref[k])) for k in ref]))
    moved = float(np.mean([np.mean(np.abs(ref[k] - ref[(k[0], (k[1] + 1) % 4)])) for k in ref]))
    assert 0 < diff < 0.1 * moved, (diff, moved)
    c.recover.compute_dtype = "float16"
    with pytest.raises(ValueError, match="recover.compute_dtype 'float16'"):
        recover.run(c, str(tmp_path / "x"))
