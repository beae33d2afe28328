"""Optimizers and learning-rate schedules with PyTorch's semantics.

SGD: weight decay is added to the gradient before momentum (torch.optim.SGD), on every parameter,
as the authors' squeeze scripts do. AdamW: decoupled decay on conv/dense kernels only (ndim > 1),
as SRe²L's validation code does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def cosine_with_warmup(base_lr: float, total_epochs: int, steps_per_epoch: int,
                       warmup_epochs: int = 0, per_epoch: bool = True) -> Callable:
    """lr(step): linear warmup, then 0.5·(1+cos(π·t/T))·base_lr; stepped per epoch or per step."""
    warm = warmup_epochs * steps_per_epoch
    total = total_epochs * steps_per_epoch

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        t = jnp.floor(step / steps_per_epoch) * steps_per_epoch if per_epoch else step
        warm_lr = base_lr * (t + (steps_per_epoch if per_epoch else 1)) / max(warm, 1)
        frac = (t - warm) / max(total - warm, 1)
        cos_lr = 0.5 * (1 + jnp.cos(math.pi * jnp.clip(frac, 0.0, 1.0))) * base_lr
        return jnp.where(t < warm, warm_lr, cos_lr)

    return schedule


SCHEDULES = ("cosine_epoch", "cosine_step", "smooth_cosine", "multistep")


def make_schedule(kind: str, base_lr: float, epochs: int, steps_per_epoch: int, *,
                  warmup_epochs: int = 0, zeta: float = 2.0, milestones=(0.8, 0.9, 0.95),
                  gamma: float = 0.5) -> Callable:
    """lr(step) of a named schedule.

    cosine_epoch / cosine_step: warmup, then a cosine to 0, stepped per epoch / per step.
    smooth_cosine: EDC's smoothed cosine, per epoch: 0.5·(1+cos(π·e/(ζ·E)))·lr, so ζ = 2 ends at
      0.5·lr (RDED's student schedule); no warmup.
    multistep: lr × gamma at each milestone (fractions of the epochs), per epoch (EDC's CIFAR-10
      student: 0.8, 0.9, 0.95 of 1000 epochs, gamma 0.5).
    """
    if kind in ("cosine_epoch", "cosine_step"):
        return cosine_with_warmup(base_lr, epochs, steps_per_epoch, warmup_epochs,
                                  per_epoch=kind == "cosine_epoch")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {SCHEDULES}")
    bounds = jnp.asarray([math.floor(m * epochs + 0.5) for m in milestones], jnp.float32)

    def schedule(step):
        epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
        if kind == "smooth_cosine":
            return base_lr * 0.5 * (1 + jnp.cos(math.pi * jnp.minimum(epoch / (zeta * epochs), 1.0)))
        return base_lr * gamma ** jnp.sum(epoch >= bounds)

    return schedule


def kernel_mask(params) -> object:
    """True for tensors with ndim > 1 (conv and dense kernels), False for BN scales and biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(kind: str, schedule: Callable, *, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    if kind == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.sgd(schedule, momentum=momentum or None))
    if kind == "adamw":
        return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay,
                           mask=kernel_mask)
    raise ValueError(f"unknown optimizer {kind!r}; expected 'sgd' or 'adamw'")
