"""The SRe²L recovery objective and optimizer for one batch (SPEC §2), free of I/O and devices.

`stage.py` maps `run_iterations` over devices with shard_map; tests call these directly.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from sre2l_jax import augment, configlib
from sre2l_jax.models import STEM_BN, apply_with_bn_stats, with_winograd_kernels

CROP_SCHEDULES = ("constant", "linear", "cosine", "step")
_NOISE, _AUG = 0, 1  # fold_in tags that keep the init-noise and augmentation streams apart


@dataclasses.dataclass(frozen=True)
class RecoverHParams:
    """The knobs of one recovery batch (hashable: a static jit argument)."""

    iterations: int
    lr: float
    image_size: int
    mean: tuple
    std: tuple
    alpha_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    alpha_class: float = 0.0  # weight of the class-conditional targets in the BN loss (EDC)
    alpha_tv: float = 0.0
    alpha_l2: float = 0.0
    crop: bool = True
    crop_scale: tuple = (0.08, 1.0)
    crop_schedule: str = "constant"
    crop_milestone: float = 1.0
    flip: bool = True
    jitter: tuple = (0, 32)
    adam_b1: float = 0.5
    adam_b2: float = 0.9
    adam_eps: float = 1e-8

    def __post_init__(self):
        if self.crop_schedule not in CROP_SCHEDULES:
            raise ValueError(f"unknown recover.crop_schedule {self.crop_schedule!r}; known: {CROP_SCHEDULES}")
        if self.crop_schedule != "constant" and not self.crop:
            raise ValueError(f"recover.crop_schedule={self.crop_schedule!r} schedules the multi-crop "
                             "scale, so it needs recover.crop=True")
        if not 0.0 < self.crop_milestone <= 1.0:
            raise ValueError(f"recover.crop_milestone must be in (0, 1], got {self.crop_milestone}")

    @classmethod
    def from_config(cls, config) -> RecoverHParams:
        return configlib.hparams(cls, config.recover, config.data)


def bn_matching_loss(stats: list, first_bn_multiplier: float, class_stats: list | None = None,
                     labels: jax.Array | None = None, alpha_class: float = 0.0) -> jax.Array:
    """Σ_l m_l (‖σ²_l − running_var_l‖₂ + ‖μ_l − running_mean_l‖₂), plain norms, stem BN × m_1.

    With alpha_class = α > 0 (EDC's soft category-aware matching), each layer's term becomes
    (1 − α)·(that) + α·(‖σ²_l − σ̄²_l‖₂ + ‖μ_l − μ̄_l‖₂), where μ̄_l, σ̄²_l are the class-conditional
    statistics of the real data (`class_stats`) averaged over the batch's labels, as EDC's code
    averages them; α = 0 is SRe²L's loss, computed exactly as without this option.
    """
    if not stats or stats[0][0] != STEM_BN:
        raise ValueError(f"expected the stem BatchNorm {STEM_BN!r} first, got {[p for p, _ in stats[:1]]}")
    total = 0.0
    for i, (_, s) in enumerate(stats):
        m = first_bn_multiplier if i == 0 else 1.0
        term = jnp.linalg.norm(s["var"] - s["running_var"]) + jnp.linalg.norm(s["mean"] - s["running_mean"])
        if alpha_class:
            target = jax.tree.map(lambda a: jnp.mean(a[labels], axis=0), class_stats[i])
            term = (1.0 - alpha_class) * term + alpha_class * (
                jnp.linalg.norm(s["var"] - target["var"]) + jnp.linalg.norm(s["mean"] - target["mean"]))
        total += m * term
    return total


def tv_l2(x: jax.Array) -> jax.Array:
    """DeepInversion's L2 total variation (four neighbour directions, Frobenius norms), NHWC."""
    d1 = x[:, :, :-1] - x[:, :, 1:]
    d2 = x[:, :-1, :] - x[:, 1:, :]
    d3 = x[:, 1:, :-1] - x[:, :-1, 1:]
    d4 = x[:, :-1, :-1] - x[:, 1:, 1:]
    return sum(jnp.linalg.norm(d.reshape(-1)) for d in (d1, d2, d3, d4))


def batch_key(seed: int, first_class: jax.Array, first_ipc: jax.Array) -> jax.Array:
    """A batch's augmentation stream, named by its first slot so it is placement-independent."""
    key = jax.random.fold_in(jax.random.key(seed), _AUG)
    return jax.random.fold_in(jax.random.fold_in(key, first_class), first_ipc)


def init_images(seed: int, classes: jax.Array, ipcs: jax.Array, shape: tuple) -> jax.Array:
    """N(0,1) noise in normalized space, one independent stream per (class, ipc) slot."""
    base = jax.random.fold_in(jax.random.key(seed), _NOISE)

    def one(c, k):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(base, c), k), shape)

    return jax.vmap(one)(classes, ipcs)


def crop_min_scale(hp: RecoverHParams, t) -> jax.Array:
    """The crop's lower scale bound at iteration t: CDA's easy → hard curriculum.

    Before crop_milestone × iterations the bound falls from crop_scale[1] (whole image) to
    crop_scale[0] — linearly, along a half cosine, or (step) stays at crop_scale[1]; afterwards it is
    crop_scale[0]. `constant` is SRe²L: crop_scale[0] throughout.
    """
    lo, hi = hp.crop_scale
    t = jnp.asarray(t, jnp.float32)
    if hp.crop_schedule == "constant":
        return jnp.full_like(t, lo)
    span = hp.crop_milestone * hp.iterations
    frac = t / max(span, 1e-9)
    during = {"linear": lo + (hi - lo) * (1.0 - frac),
              "cosine": lo + (hi - lo) * (1.0 + jnp.cos(math.pi * frac)) / 2.0,
              "step": jnp.full_like(t, hi)}[hp.crop_schedule]
    return jnp.where(t < span, during, lo)


def augment_batch(key: jax.Array, x: jax.Array, hp: RecoverHParams, t=0) -> jax.Array:
    """One iteration's shared crop + flip, then the jitter roll (the authors' order)."""
    k_crop, k_flip, k_jit = jax.random.split(key, 3)
    if hp.crop:
        scale = hp.crop_scale if hp.crop_schedule == "constant" else (crop_min_scale(hp, t),
                                                                          hp.crop_scale[1])
        box = augment.rrc_box(k_crop, x.shape[1], x.shape[2], scale)
        x = augment.crop_resize(x, box, hp.image_size)
    if hp.flip:
        x = augment.maybe_flip(x, jax.random.bernoulli(k_flip))
    lo, hi = hp.jitter
    if (lo, hi) != (0, 0):
        dy, dx = jax.random.randint(k_jit, (2,), lo, hi + 1)
        x = augment.roll(x, dy, dx)
    return x


CLASS_STATS = "class_stats"  # key of a teacher's class-conditional statistics in its variables


def objective(x, labels, model, variables, hp: RecoverHParams):
    """Total loss and its parts for an already-augmented batch."""
    model_vars = {k: v for k, v in variables.items() if k != CLASS_STATS}
    logits, stats = apply_with_bn_stats(model, model_vars, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    bn = bn_matching_loss(stats, hp.first_bn_multiplier, variables.get(CLASS_STATS), labels,
                          hp.alpha_class)
    loss = ce + hp.alpha_bn * bn
    if hp.alpha_tv:
        loss += hp.alpha_tv * tv_l2(x)
    if hp.alpha_l2:
        loss += hp.alpha_l2 * jnp.mean(jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=1))
    return loss, {"loss": loss, "ce": ce, "bn": bn}


def cosine_lr(hp: RecoverHParams):
    return lambda t: 0.5 * (1 + jnp.cos(math.pi * t / hp.iterations)) * hp.lr


def optimizer(hp: RecoverHParams) -> optax.GradientTransformation:
    """torch.optim.Adam(betas=(b1, b2), eps) with the per-iteration cosine lr, no weight decay."""
    return optax.chain(optax.scale_by_adam(hp.adam_b1, hp.adam_b2, hp.adam_eps),
                       optax.scale_by_schedule(lambda t: -cosine_lr(hp)(t)))


def pixel_bounds(hp: RecoverHParams) -> tuple[jax.Array, jax.Array]:
    mean, std = jnp.asarray(hp.mean), jnp.asarray(hp.std)
    return -mean / std, (1 - mean) / std


def teacher_index(t, num_teachers: int):
    """Which teacher iteration t optimizes against: a fixed cycle, teacher t mod n (G-VBSM)."""
    return t % num_teachers


def run_iterations(x, opt_state, labels, key, t0, t1, *, models: tuple, variables: tuple,
                   hp: RecoverHParams):
    """Iterations t0 ≤ t < t1 on one batch; returns (x, opt_state, metrics of the last iteration).

    `models` and `variables` are equal-length tuples of the teachers (one for SRe²L); iteration t
    uses teacher `teacher_index(t, n)` for both the CE and the BN-matching terms.
    """
    model_input = (x.shape[0], hp.image_size, hp.image_size, x.shape[-1]) if hp.crop else x.shape
    teachers = tuple(with_winograd_kernels(m, v, model_input) for m, v in zip(models, variables))
    tx = optimizer(hp)
    lo, hi = pixel_bounds(hp)

    def loss(xx, k, t):
        xa = augment_batch(k, xx, hp, t)
        branches = [lambda xa, m=m, v=v: objective(xa, labels, m, v, hp) for m, v in zip(models, teachers)]
        if len(branches) == 1:
            return branches[0](xa)
        return jax.lax.switch(teacher_index(t, len(branches)), branches, xa)

    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def body(t, carry):
        x, opt_state, _ = carry
        (_, metrics), g = grad_fn(x, jax.random.fold_in(key, t), t)
        updates, opt_state = tx.update(g, opt_state, x)
        x = jnp.clip(x + updates, lo, hi)  # per-channel valid pixel range, after every step
        return x, opt_state, metrics

    zero = jnp.zeros_like(x, shape=())  # inherits x's device-varying type under shard_map
    zero = {"loss": zero, "ce": zero, "bn": zero}
    return jax.lax.fori_loop(t0, t1, body, (x, opt_state, zero))


def final_scores(x, labels, model, variables, hp: RecoverHParams):
    """Per-image CE, teacher prediction and the batch BN loss on the un-augmented images."""
    logits, stats = apply_with_bn_stats(model, {k: v for k, v in variables.items() if k != CLASS_STATS}, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {"ce": ce, "pred": jnp.argmax(logits, -1),
            "bn": bn_matching_loss(stats, hp.first_bn_multiplier) * jnp.ones_like(ce)}


def to_uint8(x, hp: RecoverHParams):
    """Denormalize, clamp to [0,1] and truncate to uint8, as the authors' save_images does."""
    import numpy as np

    x = np.asarray(x, np.float32) * np.asarray(hp.std, np.float32) + np.asarray(hp.mean, np.float32)
    return (np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
