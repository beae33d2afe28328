"""A 2-D convolution whose input gradient XLA:CPU runs on its fast kernel.

XLA:CPU uses its fast (Eigen) convolution only for the canonical NHWC/HWIO layout, and its pass that
canonicalizes other layouts visits only the entry computation. Autodiff's input-gradient
convolutions are non-canonical, so inside `lax.fori_loop` (the recovery loop) 17 of ResNet-18's 43
convolutions fell back to a generic path: the recovery step was 2-3× slower than PyTorch's (measured
in benchmarks/, see benchmarks/README.md). Here the input gradient is written as the equivalent
canonical convolution (flipped, in/out-swapped kernel, dilated by the stride); the arithmetic is
the same, parameters and checkpoints are untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")


def _input_grad_padding(in_size, k_size, stride, out_size, pad, rhs_dilation):
    """Padding of the transposed convolution, as jax's own conv transpose rule computes it."""
    out = []
    for n, k, s, o, (lo, _), d in zip(in_size, k_size, stride, out_size, pad, rhs_dilation):
        k_dil = (k - 1) * d + 1
        before = k_dil - 1 - lo
        out.append((before, n + k_dil - 1 - ((o - 1) * s + 1) - before))
    return out


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **unused):
    """Drop-in for `lax.conv_general_dilated` in `nn.Conv` (NHWC/HWIO, no groups or input dilation)."""
    del dimension_numbers, unused  # flax passes NHWC/HWIO for 2-D convs, which DN states
    if feature_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1, 1))):
        raise NotImplementedError("canonical_conv: groups and input dilation are not supported")
    strides = tuple(window_strides)
    rhs_dilation = tuple(rhs_dilation or (1,) * len(strides))
    pads = tuple(tuple(p) for p in padding)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, strides, pads, None, rhs_dilation, DN, precision=precision)

    @jax.custom_vjp
    def f(x, w):
        return conv(x, w)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        k = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3).astype(g.dtype)
        pad = _input_grad_padding(x.shape[1:3], w.shape[:2], strides, g.shape[1:3], pads, rhs_dilation)
        dx = lax.conv_general_dilated(g, k, (1,) * len(strides), pad, strides, rhs_dilation, DN,
                                      precision=precision)
        dw = jax.vjp(lambda ww: conv(x, ww), w)[1](g)[0]  # XLA drops it where unused (recovery)
        return dx.astype(x.dtype), dw

    f.defvjp(fwd, bwd)
    return f(lhs, rhs)
