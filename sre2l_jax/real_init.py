"""Real-image starting points for recovery, one per (class, ipc) slot, instead of N(0,1) noise.

  real_random   a random train image of the slot's class (SRe²L++ / DWA style)
  real_medium   the class's images of medium difficulty: a candidate pool scored by the teacher's
                confidence, the IPC images around its median taken (CV-DD style)
  real_mosaic   2×2 tiles of real crops of the class, the crops the teacher is most confident about
                out of a candidate pool (RDED style)

A slot's choice depends only on (seed, class, ipc, the run's IPC, init_pool): not on devices, hosts
or the ipc/class range being run, so split and resumed runs start from the same images.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sre2l_jax.data import sources
from sre2l_jax.data.transforms import EvalResize, resize_image, rrc_params

MODES = ("noise", "real_random", "real_medium", "real_mosaic")
# RandomResizedCrop scale of mosaic crops: a 0.08 crop of a 28² image is ~8×8 pixels, nothing a
# teacher recognizes; a quarter of the image and up keeps each tile an object part.
MOSAIC_CROP_SCALE = (0.25, 1.0)
_TAG = 0x1417  # keeps these draws apart from other uses of the seed
_SCORE_BATCH = 256


@dataclasses.dataclass
class StartImages:
    images: dict[tuple[int, int], np.ndarray]  # slot -> float32 [H,W,C] in normalized space
    sources: dict[tuple[int, int], list[int]]  # slot -> train-split indices it was built from


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


def tile_2x2(tiles: list[np.ndarray], size: int) -> np.ndarray:
    """Four images → one size×size mosaic (row-major), each tile resized to its quadrant."""
    h1, w1 = size // 2, size // 2
    rows = []
    for r, h in ((0, h1), (1, size - h1)):
        row = [resize_image(tiles[2 * r + j], (h, w)) for j, w in ((0, w1), (1, size - w1))]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


class _Scorer:
    """The teacher's softmax probability of a given class, batched with one compiled shape."""

    def __init__(self, model, variables, mean, std):
        self.variables = variables
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))

    def normalize(self, images: np.ndarray) -> np.ndarray:
        return (images.astype(np.float32) / 255.0 - self.mean) / self.std

    def confidence(self, images: np.ndarray, c: int) -> np.ndarray:
        out = []
        for i in range(0, len(images), _SCORE_BATCH):
            chunk = self.normalize(images[i:i + _SCORE_BATCH])
            n = len(chunk)
            chunk = np.concatenate([chunk, np.zeros((_SCORE_BATCH - n, *chunk.shape[1:]), np.float32)])
            out.append(np.asarray(self.fn(self.variables, chunk))[:n, c])
        return np.concatenate(out)


def start_images(config, model, variables, slots: list[tuple[int, int]]) -> StartImages:
    """The normalized start image of every (class, ipc) slot in `slots` for `recover.init`."""
    rc, dc = config.recover, config.data
    if rc.init not in MODES[1:]:
        raise ValueError(f"unknown recover.init {rc.init!r}; known: {MODES}")
    source = sources.build_source(dc, "train")
    labels = sources.source_labels(source)
    fit = EvalResize(dc.image_size, dc.eval_resize)
    load = lambda i: np.asarray(fit.map(source[int(i)])["image"])
    scorer = _Scorer(model, variables, dc.mean, dc.std)
    images, chosen = {}, {}
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
        else:
            tiles, tile_src = _mosaic_tiles(config, c, perm, load, scorer)
            for k in ks:
                quad = [(4 * k + q) % len(tiles) for q in range(4)]
                chosen[(c, k)] = [tile_src[q] for q in quad]
                images[(c, k)] = tile_2x2([tiles[q] for q in quad], dc.image_size)
        for k in ks:
            if (c, k) not in images:
                images[(c, k)] = load(chosen[(c, k)][0])
    for slot, im in images.items():
        if im.ndim == 2:
            im = im[..., None]
        images[slot] = scorer.normalize(im)
    return StartImages(images, chosen)


def _mosaic_tiles(config, c: int, perm: np.ndarray, load, scorer: _Scorer):
    """The 4·IPC crops of class c the teacher is most confident about, best first, with sources."""
    rc, size = config.recover, config.data.image_size
    n = max(rc.init_pool, 4 * rc.ipc)
    rng = np.random.default_rng([config.seed, _TAG, c, 4])
    src = perm[np.arange(n) % len(perm)]
    crops = []
    for i in src:
        image = load(i)
        top, left, h, w = rrc_params(rng, image.shape[0], image.shape[1], MOSAIC_CROP_SCALE)
        crop = resize_image(image[top:top + h, left:left + w], (size, size))
        crops.append(crop if crop.ndim == 3 else crop[..., None])
    crops = np.stack(crops)
    best = np.argsort(-scorer.confidence(crops, c), kind="stable")[:4 * rc.ipc]
    return [crops[b] for b in best], [int(src[b]) for b in best]
