"""The student's jitted steps: online soft labels, replayed stored labels, and labelling a batch.

Steps are `jax.jit`s with explicit shardings (batch over the `data` axis, everything else
replicated), so BatchNorm sees the global batch. Epoch and batch index are array arguments: one
compile per batch shape, not per epoch or seed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sre2l_jax import parallel
from sre2l_jax.student import plans
from sre2l_jax.student.losses import hard_loss, kd_loss, mse_ce_loss
from sre2l_jax.student.plans import AugSpec, apply_plan, augmented, to_input
from sre2l_jax.train_state import TrainState

LOSSES = ("kl", "mse_ce")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything static about one student training: the jitted steps close over it."""

    student: Any
    teacher: Any
    tx: optax.GradientTransformation
    spec: AugSpec
    tau: float
    tau2_factor: bool
    logits_dtype: str = "float32"  # online mode: round teacher logits through this dtype
    loss: str = "kl"  # kl | mse_ce
    ce_weight: float = 0.025  # mse_ce: weight of the cross-entropy on the (mixed) hard labels
    ema: float = 0.0  # rate of the exponential moving average of the weights (0: none)
    top_k_targets: bool = False  # stored top-k labels: classes they did not store hold FILL_LOGIT
    hard_label_smoothing: float = 0.0  # hard-label students only (the soft losses never smooth)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"student.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.hard_label_smoothing < 1.0:
            raise ValueError(f"student.hard_label_smoothing must be in [0, 1), got "
                             f"{self.hard_label_smoothing}")

    def soft_loss(self, logits, targets, hard_labels):
        """The distillation loss of a soft-label step."""
        if self.loss == "kl":
            return kd_loss(logits, targets, self.tau, self.tau2_factor)
        return mse_ce_loss(logits, targets, hard_labels, self.ce_weight, self.top_k_targets)


def _update(state: TrainState, x: jax.Array, loss_of_logits: Callable, recipe: Recipe):
    def loss_fn(params):
        logits, updates = recipe.student.apply({"params": params, "batch_stats": state.batch_stats},
                                               x, train=True, mutable=["batch_stats"])
        return loss_of_logits(logits), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = recipe.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, batch_stats, opt_state)
    if state.ema is not None:
        new = new.replace(ema=ema_update(state.ema, params, recipe.ema))
    return new, {"loss": loss}


def ema_update(ema, params, rate: float):
    """ema ← rate·ema + (1 − rate)·params after every step (EDC: parameters only; the BN running
    statistics stay the live model's)."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def teacher_logits(recipe: Recipe, teacher_vars: dict, x: jax.Array) -> jax.Array:
    logits = recipe.teacher.apply(teacher_vars, x, train=False).astype(jnp.float32)
    return logits.astype(recipe.logits_dtype).astype(jnp.float32)


def online_step(state, teacher_vars, images, labels, ids, soft, *, recipe: Recipe):
    """Soft labels from the frozen teacher on this very batch, or (soft false) hard labels mixed by λ.

    `soft` is a runtime flag, so the SRe²L run and the hard-label baselines share one compiled
    step per batch shape; `lax.cond` skips the teacher's forward pass when it is false.
    """
    x, plan = augmented(images, ids, recipe.spec)
    shape = jax.eval_shape(lambda: teacher_logits(recipe, teacher_vars, x))
    targets = jax.lax.cond(soft, lambda: teacher_logits(recipe, teacher_vars, x),
                           lambda: jnp.zeros(shape.shape, shape.dtype))
    targets = jax.lax.stop_gradient(targets)
    return _update(state, x, lambda s: jnp.where(
        soft, recipe.soft_loss(s, targets, labels),
        hard_loss(s, labels, plan, recipe.hard_label_smoothing)), recipe)


def stored_step(state, images, labels, plan, targets, *, recipe: Recipe):
    """Replay a stored plan with stored teacher logits (FKD-style relabelled training)."""
    x = apply_plan(to_input(images, plan, recipe.spec), plan, recipe.spec)
    return _update(state, x, lambda s: recipe.soft_loss(s, targets, labels), recipe)


def label_batch(teacher_vars, images, ids, *, recipe: Recipe):
    """What relabel stores for one batch: its plan and the teacher's float32 logits."""
    x, plan = augmented(images, ids, recipe.spec)
    return plan, recipe.teacher.apply(teacher_vars, x, train=False).astype(jnp.float32)


class Steps:
    """The jitted steps of one recipe on one mesh, compiled once per batch shape and reused."""

    def __init__(self, recipe: Recipe, mesh, state_sharding):
        self.recipe, self.mesh = recipe, mesh
        self.n_dev = mesh.devices.size
        self.repl = parallel.replicated(mesh)
        self.state_sharding = state_sharding
        self._fns: dict = {}

    def _batch_sharding(self, batch: int):
        # A batch the devices cannot split evenly (a last partial batch) runs replicated: the same
        # numbers on every device, still one global BN batch.
        return parallel.batch_sharding(self.mesh) if batch % self.n_dev == 0 else self.repl

    def place(self, array: np.ndarray) -> jax.Array:
        """Put a host-identical per-example array on the mesh the way the steps expect it."""
        array = np.asarray(array)
        if array.shape[0] % self.n_dev == 0:
            return parallel.shard_host_identical(self.mesh, array)
        return parallel.replicate(self.mesh, array)

    def _jit(self, name: str, batch: int, build: Callable):
        key = (name, batch % self.n_dev == 0)
        if key not in self._fns:
            self._fns[key] = build(self._batch_sharding(batch))
        return self._fns[key]

    def _online_fn(self, batch: int):
        return self._jit("online", batch, lambda b: jax.jit(
            functools.partial(online_step, recipe=self.recipe),
            in_shardings=(self.state_sharding, self.repl, b, b, self.repl, self.repl),
            out_shardings=(self.state_sharding, self.repl), donate_argnums=(0,),
            compiler_options=parallel.training_compiler_options()))

    def online(self, state, teacher_vars, images, labels, ids, soft: bool):
        return self._online_fn(images.shape[0])(state, teacher_vars, images, labels, ids,
                                                parallel.replicate(self.mesh, np.asarray(soft)))

    def compile_online(self, state, teacher_vars, image_shape: tuple) -> None:
        """Compile `online` for uint8 batches of `image_shape` ahead of its first call (`state` and
        `teacher_vars` may be shapes), so that several lanes can compile at once."""
        b, spec = image_shape[0], self._spec
        state = jax.tree.map(lambda x, sharding: spec(x.shape, x.dtype, sharding), state,
                             self.state_sharding)
        self._online_fn(b).lower(state, teacher_vars, spec(image_shape, jnp.uint8), spec((b,), jnp.int32),
                                 spec((3,), jnp.int32, self.repl), spec((), jnp.bool_)).compile()

    def _spec(self, shape: tuple, dtype, sharding=None) -> jax.ShapeDtypeStruct:
        """An argument's shape as the steps receive it: batch-sharded, or else replicated (the
        mesh's axis types are part of a compiled program's key)."""
        if sharding is None:
            sharding = self._batch_sharding(shape[0]) if len(shape) in (1, 4) else self.repl
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def stored(self, state, images, labels, plan, targets):
        fn = self._jit("stored", images.shape[0], lambda b: jax.jit(
            functools.partial(stored_step, recipe=self.recipe),
            in_shardings=(self.state_sharding, b, b,
                          {k: self.repl if k in plans.BATCH_KEYS else b for k in plan}, b),
            out_shardings=(self.state_sharding, self.repl), donate_argnums=(0,),
            compiler_options=parallel.training_compiler_options()))
        return fn(state, images, labels, plan, targets)

    def _label_fn(self, batch: int):
        return self._jit("label", batch, lambda b: jax.jit(
            functools.partial(label_batch, recipe=self.recipe),
            in_shardings=(self.repl, b, self.repl), out_shardings=self.repl))

    def label(self, teacher_vars, images, ids):
        return self._label_fn(images.shape[0])(teacher_vars, images, ids)

    def compile_label(self, teacher_vars, image_shape: tuple) -> None:
        """`compile_online` for `label`."""
        self._label_fn(image_shape[0]).lower(teacher_vars, self._spec(image_shape, jnp.uint8),
                                             self._spec((3,), jnp.int32, self.repl)).compile()
