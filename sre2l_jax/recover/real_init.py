"""Real-image starting points for recovery, one per (class, ipc) slot, instead of N(0,1) noise.

  real_random   a random train image of the slot's class (SRe²L++ / DWA style)
  real_medium   the class's images of medium difficulty: a candidate pool scored by the teacher's
                confidence, the IPC images around its median taken (CV-DD style)
  real_mosaic   2×2 tiles of real crops of the class, the crops the teacher is most confident about
                out of a candidate pool (RDED style)
  rded          RDED's selected images (`recover.rded_*`, scored by the teacher): what EDC's
                Tiny-ImageNet and ImageNet scripts start from (`--initial-img-dir` = RDED's output)

A slot's choice depends only on (seed, class, ipc, the run's IPC, init_pool): not on devices, hosts
or the ipc/class range being run, so split and resumed runs start from the same images. The choice is
kept as train indices (and crop boxes); pixels are built per recovery round, so an ImageNet-sized run
does not hold 50k decoded start images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from sre2l_jax.data import sources, splits
from sre2l_jax.data.mosaics import stitch
from sre2l_jax.data.transforms import EvalResize, resize_image, rrc_params

MODES = ("noise", "real_random", "real_medium", "real_mosaic", "rded")
# RandomResizedCrop scale of mosaic crops: a 0.08 crop of a 28² image is ~8×8 pixels, nothing a
# teacher recognizes; a quarter of the image and up keeps each tile an object part.
MOSAIC_CROP_SCALE = (0.25, 1.0)
_TAG = 0x1417  # keeps these draws apart from other uses of the seed
_SCORE_BATCH = 256


Slot = tuple[int, int]  # (class, ipc)
Box = tuple[int, int, int, int]  # (top, left, h, w) of a crop


@dataclasses.dataclass
class StartImages:
    """Where each slot's start image comes from; `image(slot)` builds it (normalized float32 HWC)."""

    sources: dict[Slot, list[int]]  # train-split indices: one image, or the f×f patches of a mosaic
    boxes: dict[Slot, list[Box]]  # cropped slots only: the crop of each source
    load: Callable[[int], np.ndarray]  # train index -> uint8 image at the model's resolution
    normalize: Callable[[np.ndarray], np.ndarray]
    size: int

    def image(self, slot: Slot) -> np.ndarray:
        if slot in self.boxes:
            factor = math.isqrt(len(self.boxes[slot]))
            patches = [crop_to(self.load(i), box, self.size // factor)
                       for i, box in zip(self.sources[slot], self.boxes[slot])]
            im = patches[0] if factor == 1 else stitch(patches, self.size, factor)
        else:
            im = self.load(self.sources[slot][0])
        return self.normalize(im if im.ndim == 3 else im[..., None])


def crop_to(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    top, left, h, w = box
    crop = resize_image(image[top:top + h, left:left + w], (size, size))
    return crop if crop.ndim == 3 else crop[..., None]


def train_images(data_cfg) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """The train split's labels, and a loader: train index → uint8 image at the model's resolution."""
    source = splits.build_source(data_cfg, "train")
    fit = EvalResize(data_cfg.image_size, data_cfg.eval_resize)
    return sources.source_labels(source), lambda i: np.asarray(fit.map(source[int(i)])["image"])


def class_permutation(labels: np.ndarray, c: int, seed: int) -> np.ndarray:
    """The train indices of class c in a seeded order (the same on every host)."""
    pool = np.flatnonzero(labels == c)
    if not len(pool):
        raise ValueError(f"real-image init: the train split has no image of class {c}")
    return np.random.default_rng([seed, _TAG, c]).permutation(pool)


def medium_picks(confidence: np.ndarray, ipc: int) -> np.ndarray:
    """Positions of the `ipc` candidates around the median confidence, in confidence order."""
    order = np.argsort(confidence, kind="stable")
    start = max(0, (len(order) - ipc) // 2)
    return order[start:start + ipc]


class Scorer:
    """A frozen model's softmax probabilities, in batches of one compiled shape on one device (so
    a score does not depend on which other images, or how many devices, are around)."""

    def __init__(self, model, variables, mean, std):
        self.variables = variables
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        def probs_and_features(v, x):
            logits, features = model.apply(v, x, train=False, return_features=True)
            return jax.nn.softmax(logits, axis=-1), features

        self.fn = jax.jit(probs_and_features)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        return (images.astype(np.float32) / 255.0 - self.mean) / self.std

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """[N, classes] for normalized float32 images [N, H, W, C]."""
        return self.probabilities_and_features(x)[0]

    def probabilities_and_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([N, classes], the penultimate features [N, D]) for normalized float32 images [N, H, W, C]."""
        probs, features = [], []
        for i in range(0, len(x), _SCORE_BATCH):
            chunk = x[i:i + _SCORE_BATCH]
            n = len(chunk)
            chunk = np.concatenate([chunk, np.zeros((_SCORE_BATCH - n, *chunk.shape[1:]), np.float32)])
            p, f = self.fn(self.variables, chunk)
            probs.append(np.asarray(p)[:n])
            features.append(np.asarray(f)[:n])
        return np.concatenate(probs), np.concatenate(features)

    def confidence(self, images: np.ndarray, c: int) -> np.ndarray:
        return self.probabilities(self.normalize(images))[:, c]


def start_images(config, model, variables, slots: list[Slot]) -> StartImages:
    """Choose the start image of every (class, ipc) slot in `slots` for `recover.init`."""
    rc, dc = config.recover, config.data
    if rc.init not in MODES[1:]:
        raise ValueError(f"unknown recover.init {rc.init!r}; known: {MODES}")
    selector = _rded_selector(config, model, variables) if rc.init == "rded" else None
    if selector is not None:  # it already holds the split's labels, a loader and the scorer
        labels, load, scorer = selector.labels, selector.load, selector.scorer
    else:
        labels, load = train_images(dc)
        scorer = Scorer(model, variables, dc.mean, dc.std)
    chosen, boxes = {}, {}
    for c in sorted({c for c, _ in slots}):
        ks = sorted(k for cc, k in slots if cc == c)
        perm = class_permutation(labels, c, config.seed)
        if rc.init == "real_random":
            for k in ks:
                chosen[(c, k)] = [int(perm[k % len(perm)])]
        elif rc.init == "real_medium":
            pool = perm[:max(rc.init_pool, rc.ipc)]
            picks = pool[medium_picks(scorer.confidence(np.stack([load(i) for i in pool]), c), rc.ipc)]
            for k in ks:
                chosen[(c, k)] = [int(picks[k % len(picks)])]
        elif rc.init == "rded":
            picks = selector.class_images(c, rc.ipc)
            for k in ks:
                chosen[(c, k)], boxes[(c, k)] = picks[k]["sources"], picks[k]["boxes"]
        else:
            tiles = _mosaic_tiles(config, c, perm, load, scorer)
            for k in ks:
                quad = [tiles[(4 * k + q) % len(tiles)] for q in range(4)]
                chosen[(c, k)] = [i for i, _ in quad]
                boxes[(c, k)] = [box for _, box in quad]
    return StartImages(chosen, boxes, load, scorer.normalize, dc.image_size)


def _rded_selector(config, model, variables):
    # rded builds on this module's crops and scorer, hence imported here and not at the top.
    from sre2l_jax.recover import rded

    return rded.Selector(config, model, variables)


def _mosaic_tiles(config, c: int, perm: np.ndarray, load, scorer: Scorer) -> list[tuple[int, Box]]:
    """The 4·IPC crops (train index, box) of class c the teacher is most confident about, best first."""
    rc, size = config.recover, config.data.image_size
    n = max(rc.init_pool, 4 * rc.ipc)
    rng = np.random.default_rng([config.seed, _TAG, c, 4])
    src = perm[np.arange(n) % len(perm)]
    candidates, crops = [], []
    for i in src:
        image = load(i)
        box = rrc_params(rng, image.shape[0], image.shape[1], MOSAIC_CROP_SCALE)
        candidates.append((int(i), box))
        crops.append(crop_to(image, box, size))
    best = np.argsort(-scorer.confidence(np.stack(crops), c), kind="stable")[:4 * rc.ipc]
    return [candidates[b] for b in best]
