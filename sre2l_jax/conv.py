"""Convolutions for XLA:CPU's recovery loop: a canonical input gradient, and Winograd F(4×4, 3×3).

`SRE2L_CONV` picks the implementation: `stock` (XLA's own, the only choice off CPU), `canonical`
or `winograd` (the CPU default). Parameters and checkpoints are the same for all three.

canonical: XLA:CPU uses its fast (Eigen) convolution only for the canonical NHWC/HWIO layout, and
its pass that canonicalizes other layouts visits only the entry computation. Autodiff's
input-gradient convolutions are non-canonical, so inside `lax.fori_loop` 17 of ResNet-18's 43
convolutions fell back to a generic path (2-3× slower, benchmarks/RESULTS.md). `canonical_conv`
writes the input gradient as the equivalent canonical convolution (flipped, in/out-swapped kernel,
dilated by the stride).

winograd: Eigen's im2col GEMM reaches 90-200 GFLOP/s here and spends up to 31 % of its work on zero
padding at 4×4 maps; PyTorch's direct oneDNN kernels were faster on every map size. Winograd
F(4×4, 3×3) (Lavin & Gray 2016) computes a 4×4 output tile from a 6×6 input tile with 36 products
per channel pair instead of 144: 36 [tiles, in] × [in, out] matmuls, one per tile position, between
linear transforms. Only stride-1 3×3 convolutions whose transformed kernels were prepared before the loop
(`models.with_winograd_kernels`; XLA would not hoist the 4× larger kernels out of a while loop)
use it, so training and labelling keep the canonical convolution. In float32 it agrees with the
direct convolution to ~1e-5 relative (tests/test_conv.py); benchmarks/RESULTS.md has the speed.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
CONV_MODES = ("stock", "canonical", "winograd")


def conv_mode() -> str:
    """The convolution implementation in use (`SRE2L_CONV`; off CPU always `stock`)."""
    mode = os.environ.get("SRE2L_CONV", "winograd")
    if mode not in CONV_MODES:
        raise ValueError(f"unknown SRE2L_CONV={mode!r}; known: {CONV_MODES}")
    return mode if jax.default_backend() == "cpu" else "stock"


def _input_grad_padding(in_size, k_size, stride, out_size, pad, rhs_dilation):
    """Padding of the transposed convolution, as jax's own conv transpose rule computes it."""
    out = []
    for n, k, s, o, (lo, _), d in zip(in_size, k_size, stride, out_size, pad, rhs_dilation):
        k_dil = (k - 1) * d + 1
        before = k_dil - 1 - lo
        out.append((before, n + k_dil - 1 - ((o - 1) * s + 1) - before))
    return out


def flip_swap(w: jax.Array) -> jax.Array:
    """The kernel whose convolution is the input gradient of `w`'s (spatially flipped, I↔O)."""
    return jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **unused):
    """Drop-in for `lax.conv_general_dilated` (NHWC/HWIO, no groups or input dilation)."""
    del dimension_numbers, unused  # callers pass NHWC/HWIO for 2-D convs, which DN states
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
        k = flip_swap(w).astype(g.dtype)
        pad = _input_grad_padding(x.shape[1:3], w.shape[:2], strides, g.shape[1:3], pads, rhs_dilation)
        dx = lax.conv_general_dilated(g, k, (1,) * len(strides), pad, strides, rhs_dilation, DN,
                                      precision=precision)
        dw = jax.vjp(lambda ww: conv(x, ww), w)[1](g)[0]  # XLA drops it where unused (recovery)
        return dx.astype(x.dtype), dw

    f.defvjp(fwd, bwd)
    return f(lhs, rhs)


# Winograd F(4×4, 3×3): Y = Aᵀ[(G w Gᵀ) ⊙ (Bᵀ d B)]A on 6×6 input tiles taken every 4 pixels.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


def _combine(matrix: np.ndarray, parts: list) -> list:
    """`matrix @ parts` for a constant matrix, as sums XLA fuses into one elementwise loop."""
    out = []
    for row in matrix:
        terms = [p if c == 1 else -p if c == -1 else p * float(c) for c, p in zip(row, parts) if c]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc + t
        out.append(acc)
    return out


# Below this many multiply-adds per call the transforms cost more than the matmuls save, and the
# Winograd graph compiles ~4× slower. Fashion-MNIST's recovery (28², batch 100, 1000 iterations,
# 2-core VM, one run): width 8 (largest conv 59M MACs) 17.8 → 27.2 iterations/s and the stage
# 85 → 45 s with canonical convolutions instead; width 16 (236M) 7.1 → 10.9; width 32 (944M)
# 4.3 → 3.8, so Winograd stays from there on (benchmarks/RESULTS.md).
WINOGRAD_MIN_MACS = 2**28


def winograd_eligible(input_shape, kernel_shape, stride: int, dtype=jnp.float32) -> bool:
    """Whether a convolution (padding kernel // 2) is one `winograd_conv` computes, and pays off.

    float32 only: F(4×4, 3×3)'s transforms amplify rounding error, which bfloat16's 8-bit mantissa
    would turn into visible error.
    """
    n, h, w, _ = input_shape
    macs = n * h * w * int(np.prod(kernel_shape))
    return (tuple(kernel_shape[:2]) == (3, 3) and stride == 1 and macs >= WINOGRAD_MIN_MACS
            and jnp.dtype(dtype) == jnp.float32)


def winograd_kernels(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """HWIO 3×3 kernel → G w Gᵀ as [36, I, O] for the forward, and [36, O, I] for the input gradient."""
    g = jnp.asarray(_G, jnp.float32)

    def transform(k):
        u = jnp.einsum("ia,abco,jb->ijco", g, k.astype(jnp.float32), g, precision=lax.Precision.HIGHEST)
        return u.reshape(36, *k.shape[2:]).astype(w.dtype)

    return transform(w), transform(flip_swap(w))


def winograd_conv(x: jax.Array, u: jax.Array) -> jax.Array:
    """3×3, stride 1, padding 1 convolution of NHWC `x` with one [36, I, O] transformed kernel."""
    n, h, w, c = x.shape
    th, tw = -(-h // 4), -(-w // 4)
    # Zeros past the edge are the convolution's own padding, so extra tiles change no output.
    xp = jnp.pad(x, ((0, 0), (1, 4 * th - h + 1), (1, 4 * tw - w + 1), (0, 0)))
    # Barriers keep each transform stage one materialized pass: left alone, XLA fuses the row
    # transform into all 36 tile expressions and recomputes it (2-4× slower, measured).
    rows = lax.optimization_barrier(jnp.stack(_combine(_BT, [xp[:, a:a + 4 * th:4] for a in range(6)])))
    m = []
    for i in range(6):
        tiles = _combine(_BT, [rows[i][:, :, b:b + 4 * tw:4] for b in range(6)])
        m += [jnp.dot(t.reshape(-1, c), u[6 * i + j]).reshape(n, th, tw, -1) for j, t in enumerate(tiles)]
    cols = lax.optimization_barrier(jnp.stack([jnp.stack(_combine(_AT, m[6 * i:6 * i + 6]))
                                               for i in range(6)]))  # [i, q, n, th, tw, O]
    y = jnp.stack([jnp.stack(_combine(_AT, [cols[i, q] for i in range(6)])) for q in range(4)])
    y = y.transpose(2, 3, 1, 4, 0, 5).reshape(n, 4 * th, 4 * tw, -1)  # y[q, p] → pixel (4·th+p, 4·tw+q)
    return y[:, :h, :w]


@jax.custom_vjp
def winograd_conv2d(x: jax.Array, w: jax.Array, kernels: tuple) -> jax.Array:
    """`winograd_conv` with `kernels = winograd_kernels(w)`, differentiable in x (and w)."""
    return winograd_conv(x, kernels[0])


def _winograd_fwd(x, w, kernels):
    return winograd_conv(x, kernels[0]), (x, w, kernels)


def _winograd_bwd(res, g):
    x, w, kernels = res
    dx = winograd_conv(g, kernels[1])
    dw = jax.vjp(lambda ww: lax.conv_general_dilated(x, ww, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN),
                 w)[1](g)[0]  # dropped by XLA where unused (recovery)
    return dx, dw, jax.tree.map(jnp.zeros_like, kernels)


winograd_conv2d.defvjp(_winograd_fwd, _winograd_bwd)
