"""The student recipe shared by relabel and validate: batch naming, augmentation, losses, jitted steps.

A batch is named by ids = (seed, epoch, batch index). Its image order comes from (seed, epoch) and
its whole augmentation plan — per-image RandomResizedCrop boxes and flips, then one mixing partner
permutation, λ and CutMix box for the batch — from a key derived from the ids alone. So an online
run, the stored labels `relabel` writes for the same seed, and a run resumed from a checkpoint all
see identical batches, and nothing depends on the device count.

Steps are `jax.jit`s with explicit shardings (batch over the `data` axis, everything else
replicated), so BatchNorm sees the global batch. Epoch and batch index are array arguments: one
compile per batch shape, not per epoch or seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sre2l_jax import augment, checkpoint, parallel
from sre2l_jax.data import sources
from sre2l_jax.models import Ensemble, model_from_meta
from sre2l_jax.recover_images import class_folder_names
from sre2l_jax.squeeze import TrainState

_INIT, _AUG = 0, 1  # fold_in tags keeping the student-init and augmentation streams apart
MIXES = ("none", "cutmix", "mixup")


@dataclasses.dataclass(frozen=True)
class AugSpec:
    """How a student batch is augmented (hashable: closed over by the jitted steps)."""

    image_size: int
    mean: tuple
    std: tuple
    crop_scale: tuple = (0.08, 1.0)
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0

    @classmethod
    def from_config(cls, config) -> AugSpec:
        rl, d = config.relabel, config.data
        if rl.mix not in MIXES:
            raise ValueError(f"relabel.mix must be one of {MIXES}, got {rl.mix!r}")
        return cls(d.image_size, tuple(d.mean), tuple(d.std), tuple(rl.crop_scale), rl.mix,
                   float(rl.mix_alpha), float(rl.mix_prob))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n images."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; the last partial batch is kept, as PyTorch's DataLoader does."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def init_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), _INIT)


def batch_key(ids: jax.Array) -> jax.Array:
    """The augmentation key of batch ids = int32 (seed, epoch, batch index)."""
    key = jax.random.fold_in(jax.random.key(ids[0]), _AUG)
    return jax.random.fold_in(jax.random.fold_in(key, ids[1]), ids[2])


def normalize(images: jax.Array, spec: AugSpec) -> jax.Array:
    """uint8 → normalized float32 (images stay uint8 in device memory: 4× less than float)."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return images.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std


def mix_plan(key: jax.Array, n: int, spec: AugSpec) -> dict:
    """One partner permutation, λ and CutMix box for the batch (λ = 1, empty box: no mixing)."""
    if spec.mix == "none":
        return {"perm": jnp.arange(n, dtype=jnp.int32), "lam": jnp.ones((), jnp.float32),
                "box": jnp.zeros(4, jnp.int32)}
    k_on, k_lam, k_perm, k_box = jax.random.split(key, 4)
    perm = jax.random.permutation(k_perm, n).astype(jnp.int32)
    on = jax.random.bernoulli(k_on, spec.mix_prob)
    if spec.mix_alpha == 1.0:
        # Beta(1, 1) is Uniform(0, 1); the uniform sampler compiles in a fraction of the time.
        lam = jax.random.uniform(k_lam)
    else:
        lam = jax.random.beta(k_lam, spec.mix_alpha, spec.mix_alpha)
    if spec.mix == "cutmix":
        box = jnp.where(on, augment.cutmix_box(k_box, spec.image_size, spec.image_size, lam), 0)
        box = box.astype(jnp.int32)
        # The label weight is the pasted area's complement, not the sampled λ (timm/FKD).
        lam = augment.cutmix_lambda(box, spec.image_size, spec.image_size)
    else:
        box = jnp.zeros(4, jnp.int32)
        lam = jnp.where(on, lam, 1.0)
    return {"perm": perm, "lam": lam.astype(jnp.float32), "box": box}


def apply_plan(x: jax.Array, plan: dict, spec: AugSpec) -> jax.Array:
    """Crops + flips per image, then the batch's mixing — the replay of a stored plan."""
    x = augment.apply_crops(x, plan["boxes"], plan["flips"], spec.image_size)
    if spec.mix == "cutmix":
        x = augment.apply_cutmix(x, plan["perm"], plan["box"])
    elif spec.mix == "mixup":
        x = plan["lam"] * x + (1.0 - plan["lam"]) * x[plan["perm"]]
    return x


def make_plan(key: jax.Array, x: jax.Array, spec: AugSpec) -> dict:
    """Draw a batch's full augmentation plan (boxes int32 (N,4), flips (N,), perm, lam, box)."""
    k_crop, k_mix = jax.random.split(key)
    # Only the parameters are kept; XLA drops the unused crops, and apply_plan redoes them, so
    # the online and the stored path run the very same ops on the same numbers.
    _, boxes, flips = augment.per_image_crops(k_crop, x, spec.image_size, spec.crop_scale)
    return {"boxes": boxes, "flips": flips, **mix_plan(k_mix, x.shape[0], spec)}


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, tau: float,
            tau2_factor: bool) -> jax.Array:
    """KLDiv(batchmean)(log_softmax(s/τ), softmax(t/τ)), × τ² when `tau2_factor`."""
    p = jax.nn.softmax(teacher_logits / tau, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / tau, axis=-1)
    # xlogy: classes a top-k target gives zero mass contribute 0, not 0·(-inf).
    loss = jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q) / student_logits.shape[0]
    return loss * tau**2 if tau2_factor else loss


def hard_loss(logits: jax.Array, labels: jax.Array, plan: dict) -> jax.Array:
    """Cross-entropy with the labels mixed by λ: λ·CE(y) + (1−λ)·CE(y[perm])."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    lam = plan["lam"]
    return jnp.mean(lam * ce(logits, labels) + (1.0 - lam) * ce(logits, labels[plan["perm"]]))


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


def _update(state: TrainState, x: jax.Array, loss_of_logits: Callable, recipe: Recipe):
    def loss_fn(params):
        logits, updates = recipe.student.apply({"params": params, "batch_stats": state.batch_stats},
                                               x, train=True, mutable=["batch_stats"])
        return loss_of_logits(logits), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = recipe.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), {"loss": loss}


def teacher_logits(recipe: Recipe, teacher_vars: dict, x: jax.Array) -> jax.Array:
    logits = recipe.teacher.apply(teacher_vars, x, train=False).astype(jnp.float32)
    return logits.astype(recipe.logits_dtype).astype(jnp.float32)


def _augmented(images, idx, ids, spec: AugSpec):
    x = normalize(images[idx], spec)
    plan = make_plan(batch_key(ids), x, spec)
    return apply_plan(x, plan, spec), plan


def online_step(state, teacher_vars, images, labels, idx, ids, soft, *, recipe: Recipe):
    """Soft labels from the frozen teacher on this very batch, or (soft false) hard labels mixed by λ.

    `soft` is a runtime flag, so the SRe²L run and the hard-label baselines share one compiled
    step per batch shape; `lax.cond` skips the teacher's forward pass when it is false.
    """
    x, plan = _augmented(images, idx, ids, recipe.spec)
    shape = jax.eval_shape(lambda: teacher_logits(recipe, teacher_vars, x))
    targets = jax.lax.cond(soft, lambda: teacher_logits(recipe, teacher_vars, x),
                           lambda: jnp.zeros(shape.shape, shape.dtype))
    targets = jax.lax.stop_gradient(targets)
    hard_labels = labels[idx]
    return _update(state, x, lambda s: jnp.where(
        soft, kd_loss(s, targets, recipe.tau, recipe.tau2_factor), hard_loss(s, hard_labels, plan)),
        recipe)


def stored_step(state, images, idx, plan, targets, *, recipe: Recipe):
    """Replay a stored plan with stored teacher logits (FKD-style relabelled training)."""
    x = apply_plan(normalize(images[idx], recipe.spec), plan, recipe.spec)
    return _update(state, x, lambda s: kd_loss(s, targets, recipe.tau, recipe.tau2_factor), recipe)


def label_batch(teacher_vars, images, idx, ids, *, recipe: Recipe):
    """What relabel stores for one batch: its plan and the teacher's float32 logits."""
    x, plan = _augmented(images, idx, ids, recipe.spec)
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

    def online(self, state, teacher_vars, images, labels, idx, ids, soft: bool):
        fn = self._jit("online", idx.shape[0], lambda b: jax.jit(
            functools.partial(online_step, recipe=self.recipe),
            in_shardings=(self.state_sharding, self.repl, self.repl, self.repl, b, self.repl,
                          self.repl),
            out_shardings=(self.state_sharding, self.repl), donate_argnums=(0,)))
        return fn(state, teacher_vars, images, labels, idx, ids,
                  parallel.replicate(self.mesh, np.asarray(soft)))

    def stored(self, state, images, idx, plan, targets):
        fn = self._jit("stored", idx.shape[0], lambda b: jax.jit(
            functools.partial(stored_step, recipe=self.recipe),
            in_shardings=(self.state_sharding, self.repl, b,
                          {"boxes": b, "flips": b, "perm": b, "lam": self.repl, "box": self.repl}, b),
            out_shardings=(self.state_sharding, self.repl), donate_argnums=(0,)))
        return fn(state, images, idx, plan, targets)

    def label(self, teacher_vars, images, idx, ids):
        fn = self._jit("label", idx.shape[0], lambda b: jax.jit(
            functools.partial(label_batch, recipe=self.recipe),
            in_shardings=(self.repl, self.repl, b, self.repl), out_shardings=self.repl))
        return fn(teacher_vars, images, idx, ids)


# ---------------------------------------------------------------- inputs of a student run

def load_teacher(config, workdir: str):
    """(model, variables, meta, path) of the recovery model, checked against the data config.

    With `recover.extra_teachers` the model is the Ensemble of all of them (variables: a tuple);
    meta and path are the first teacher's.
    """
    path = config.recover.teacher or os.path.join(workdir, "squeeze", "model")
    loaded = checkpoint.load_teachers(config.data, path, config.recover.extra_teachers)
    (variables, meta), *extra = loaded
    if not extra:
        return model_from_meta(meta), variables, meta, path
    return (Ensemble(tuple(model_from_meta(m) for _, m in loaded)), tuple(v for v, _ in loaded),
            meta, path)


def synthetic_dir(config, workdir: str) -> str:
    return config.relabel.images or os.path.join(workdir, "recover", "images")


def _class_folders(images_dir: str, teacher_meta: dict, num_classes: int) -> list[str]:
    # recover writes the folder of each class id into its manifest; without one (images from
    # elsewhere) the teacher's class names give the same folder names recover would have chosen.
    manifest = os.path.join(os.path.dirname(os.path.normpath(images_dir)), "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            folders = json.load(f).get("class_folders")
        if folders:
            return list(folders)
    names = teacher_meta.get("class_names") or [str(i) for i in range(num_classes)]
    return class_folder_names(list(names))


def load_synthetic(config, workdir: str, teacher_meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic set as (uint8 images [N,H,W,C], int32 class ids [N]) in the teacher's order."""
    images_dir = synthetic_dir(config, workdir)
    num_classes = config.data.num_classes
    has_files = os.path.isdir(images_dir) and any(files for _, _, files in os.walk(images_dir))
    if not has_files:
        raise FileNotFoundError(f"no synthetic images in {images_dir}; run the recover stage first "
                                "or point relabel.images at an ImageFolder of recovered images")
    folders = _class_folders(images_dir, teacher_meta, num_classes)
    if len(folders) != num_classes:
        raise ValueError(f"{images_dir}: {len(folders)} class folders are expected but the data has "
                         f"{num_classes} classes")
    source = sources.ImageFolderSource(images_dir, "", class_names=folders,
                                       channels=config.data.channels)
    images, labels = sources.load_arrays(source, config.data.image_size)
    missing = [folders[c] for c in np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)]
    if missing:
        raise ValueError(f"{images_dir}: no synthetic images for {len(missing)} classes "
                         f"({missing[:5]}...); finish the recover stage for every class")
    return images, labels


def fingerprint(*arrays: Any) -> str:
    """A short content hash of arrays (the synthetic set, a teacher's variables)."""
    h = hashlib.sha256()
    for a in jax.tree.leaves(arrays):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
