"""What a student batch is: its images, order and augmentation plan, named by (seed, epoch, batch).

A batch's image order comes from (seed, epoch) and its whole augmentation plan — per-image
RandomResizedCrop boxes and flips, then one mixing partner permutation, λ and CutMix box for the
batch — from a key derived from ids = (seed, epoch, batch index) alone. So an online run, the stored
labels `relabel` writes for the same seed, and a run resumed from a checkpoint all see identical
batches, and nothing depends on the device count.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import augment, configlib, randaugment

_INIT, _AUG = 0, 1  # fold_in tags keeping the student-init and augmentation streams apart
_RANDAUGMENT = 2  # fold_in tag of the RandAugment draw inside a batch's key
MIXES = ("none", "cutmix", "mixup")
CROPS = ("rrc", "pad_crop", "none")
BATCH_KEYS = ("lam", "box")  # plan entries drawn once per batch; every other entry is per image


@dataclasses.dataclass(frozen=True)
class AugSpec:
    """How student batches are drawn and augmented: what stored labels replay (hashable: the
    jitted steps close over it)."""

    image_size: int
    mean: tuple
    std: tuple
    crop_scale: tuple = (0.08, 1.0)
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0
    batch_size: int = 1024
    epochs: int = 300
    crop: str = "rrc"  # rrc: RandomResizedCrop(crop_scale) | pad_crop: RandomCrop(padding) | none
    crop_padding: int = 4
    flip: bool = True
    randaugment: int = 0  # RandAugment operations per image before the crop (0: off; EDC: 2)
    randaugment_magnitude: int = 9  # of randaugment.NUM_BINS (torchvision's default 9)

    def __post_init__(self):
        if self.mix not in MIXES:
            raise ValueError(f"student.mix must be one of {MIXES}, got {self.mix!r}")
        if self.crop not in CROPS:
            raise ValueError(f"student.crop must be one of {CROPS}, got {self.crop!r}")

    @classmethod
    def from_config(cls, config) -> AugSpec:
        return configlib.hparams(cls, config.student, config.data)


def hard_label_spec(spec: AugSpec, crop_scale: tuple) -> AugSpec:
    """The hard-label students' augmentation: `spec` with their own RandomResizedCrop scale
    (`student.hard_label_crop_scale`); an empty `crop_scale` keeps `spec`."""
    if not crop_scale:
        return spec
    if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"student.hard_label_crop_scale must be (low, high) with 0 < low <= high <= 1, "
                         f"got {tuple(crop_scale)}")
    if spec.crop != "rrc":
        raise ValueError(f"student.hard_label_crop_scale sets a RandomResizedCrop scale, but "
                         f"student.crop is {spec.crop!r}: set student.crop='rrc' or leave it ()")
    return dataclasses.replace(spec, crop_scale=tuple(float(v) for v in crop_scale))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n images."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; the last partial batch is kept, as PyTorch's DataLoader does."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def first_batch_shape(data_cfg, bounds: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """The uint8 image shape of the first batch: the shape the steps are compiled for ahead."""
    start, end = bounds[0]
    return (end - start, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)


def init_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), _INIT)


def batch_key(ids: jax.Array) -> jax.Array:
    """The augmentation key of batch ids = int32 (seed, epoch, batch index)."""
    key = jax.random.fold_in(jax.random.key(ids[0]), _AUG)
    return jax.random.fold_in(jax.random.fold_in(key, ids[1]), ids[2])


def normalize(images: jax.Array, spec: AugSpec) -> jax.Array:
    """Pixel values (uint8, or float in [0, 255]) → normalized float32 (images stay uint8 in device
    memory: 4× less than float)."""
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


def to_input(images: jax.Array, plan: dict, spec: AugSpec) -> jax.Array:
    """A uint8 batch → the plan's RandAugment on its pixel values, if any → normalized float32."""
    if "ra_ops" in plan:
        images = randaugment.apply(images.astype(jnp.float32), plan["ra_ops"], plan["ra_signs"],
                                   spec.randaugment_magnitude)
    return normalize(images, spec)


def apply_plan(x: jax.Array, plan: dict, spec: AugSpec) -> jax.Array:
    """Crops + flips per image of the normalized batch `x`, then the batch's mixing — the replay
    of a stored plan (after `to_input`)."""
    if spec.crop == "rrc":
        x = augment.apply_crops(x, plan["boxes"], plan["flips"], spec.image_size)
    else:
        if spec.crop == "pad_crop":
            black = -np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
            x = augment.shift_crops(x, plan["boxes"], spec.crop_padding, black)
        x = augment.maybe_flip(x, plan["flips"])
    if spec.mix == "cutmix":
        x = augment.apply_cutmix(x, plan["perm"], plan["box"])
    elif spec.mix == "mixup":
        x = plan["lam"] * x + (1.0 - plan["lam"]) * x[plan["perm"]]
    return x


def crop_plan(key: jax.Array, x: jax.Array, spec: AugSpec) -> tuple[jax.Array, jax.Array]:
    """Per-image crop boxes (top, left, h, w) int32 (N,4) and flips bool (N,)."""
    n, h, w = x.shape[:3]
    if spec.crop == "rrc":
        # Only the parameters are kept; XLA drops the unused crops, and apply_plan redoes them,
        # so the online and the stored path run the very same ops on the same numbers.
        _, boxes, flips = augment.per_image_crops(key, x, spec.image_size, spec.crop_scale)
    else:
        k_box, k_flip = jax.random.split(key)
        flips = jax.random.bernoulli(k_flip, 0.5, (n,))
        boxes = (augment.pad_crop_boxes(k_box, n, h, spec.crop_padding) if spec.crop == "pad_crop"
                 else jnp.tile(jnp.asarray([0, 0, h, w], jnp.int32), (n, 1)))
    return boxes, flips if spec.flip else jnp.zeros_like(flips)


def make_plan(key: jax.Array, x: jax.Array, spec: AugSpec) -> dict:
    """Draw a batch's full augmentation plan (boxes int32 (N,4), flips (N,), perm, lam, box; with
    RandAugment also ra_ops int32 (N,k) and ra_signs bool (N,k))."""
    k_crop, k_mix = jax.random.split(key)
    boxes, flips = crop_plan(k_crop, x, spec)
    plan = {"boxes": boxes, "flips": flips, **mix_plan(k_mix, x.shape[0], spec)}
    if spec.randaugment:
        plan.update(randaugment.sample(jax.random.fold_in(key, _RANDAUGMENT), x.shape[0],
                                       spec.randaugment))
    return plan


def augmented(images: jax.Array, ids: jax.Array, spec: AugSpec):
    """Batch `ids` (uint8 images): its plan drawn, then RandAugment, normalization, crops, mixing."""
    plan = make_plan(batch_key(ids), images.astype(jnp.float32), spec)
    return apply_plan(to_input(images, plan, spec), plan, spec), plan
