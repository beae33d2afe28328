"""Training-mode BatchNorm with a hand-written gradient: fewer passes over the activations.

Autodiff of `(x − mean(x)) · rsqrt(var(x) + ε) · scale + bias` reads the activations many times
(the mean, the variance, each of their gradients, the normalization). The closed form reads
them twice forward (mean, then the centred variance) and twice backward (Σdy and Σdy·x̂ in one
pass, then dx):

    x̂ = (x − μ)·σ⁻¹,  dbias = Σ dy,  dscale = Σ dy·x̂,
    dx = scale·σ⁻¹ · (dy − dbias/n − x̂·dscale/n)  (+ the terms of the mean/var outputs, if used).

Sums over (batch, H, W) reshape the channels-last tensor so that a row holds ≥ 128 values: XLA:CPU
vectorizes the reduction along rows, and 8 or 16 channels alone fill a fraction of a vector. Used
for training only; recovery's eval-mode statistics (the BN-matching loss) keep the plain formulas.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_ROW = 128  # values per row of the reshaped reduction


def channel_sum(x: jax.Array) -> jax.Array:
    """Σ over every axis but the last, as a wide-row reduction followed by a small one."""
    c = x.shape[-1]
    n = x.size // c
    k = max(1, _ROW // c)
    while k > 1 and n % k:
        k //= 2
    return jnp.sum(jnp.sum(x.reshape(n // k, k * c), axis=0).reshape(k, c), axis=0)


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = x.size // x.shape[-1]
    mean = channel_sum(x) / n
    return mean, channel_sum(jnp.square(x - mean)) / n  # biased variance, centred: no cancellation


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
    """(y, batch mean, biased batch variance) of float32 NHWC `x`, normalized with batch stats."""
    mean, var = _stats(x)
    return (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias, mean, var


def _fwd(x, scale, bias, eps):
    mean, var = _stats(x)
    inv = jax.lax.rsqrt(var + eps)
    y = (x - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _bwd(eps, res, cotangents):
    del eps
    x, mean, inv, scale = res
    dy, dmean, dvar = cotangents
    n = x.size // x.shape[-1]
    xhat = (x - mean) * inv
    dbias = channel_sum(dy)
    dscale = channel_sum(dy * xhat)
    dx = (scale * inv) * (dy - dbias / n - xhat * (dscale / n))
    # The batch statistics are outputs too (running averages); their cotangents are usually zero.
    dx = dx + dmean / n + dvar * (2.0 / n) * (x - mean)
    return dx, dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)
