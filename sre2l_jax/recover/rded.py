"""RDED (Sun et al., CVPR 2024, LINs-lab/RDED): pick realistic real patches, no optimization.

Per class c, over `rded_pool` real train images of c (the class's seeded order, as real_init's):
  1. `rded_crops` RandomResizedCrop(size // f, scale=rded_crop_scale, ratio 1) boxes per image;
  2. each crop, resized to size // f and zero-padded (centred, in normalized space: the mean
     colour) to size × size — or, with `rded_score_view=decoded`, resized on to size × size, the
     view a multi-formation student trains on — is scored by the scoring model's cross-entropy on c;
  3. every image keeps its lowest-loss crop, and the ipc·f² images with the lowest loss are kept,
     best first (`rded_select=loss`, RDED); or, with `rded_select=cluster`, the pool's best crops
     are split into ipc·f² k-means clusters of the scoring model's penultimate features and each
     cluster gives its lowest-loss crop (realism within each mode of the class, not only the easiest
     mode), best first; `rded_select=medoid` takes each cluster's crop nearest its mean instead;
     `rded_select=median` the ipc·f² images around the class's median loss (CV-DD's medium
     difficulty), best first;
  4. output image k stitches f × f of them, grid cell j (row-major) holding the (j·ipc + k)-th; a
     cell is size // f pixels, the first size % f rows and columns one more (RDED's `mix_images`).
With f = 1 an output image is its selected crop at size × size. With `rded_bits` = b < 8 (bit
planes, data/mosaics.py) each output image packs 8 / b such images (plane p holding the
((p·f² + j)·ipc + k)-th patches), and crops are scored as the student decodes them: at b bits.
A class's images depend only on (seed, class, the settings), not on devices, hosts or the other
classes, and a finished class is recorded in progress.json (resume skips it). Every process scores
every class, so several hosts take as long as one; each writes the images of its own classes
(c mod processes).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from sre2l_jax.data.mosaics import check_bits, dequantize, pack, quantize, stitch
from sre2l_jax.data.transforms import resize_image, rrc_params
from sre2l_jax.formats import images as image_files
from sre2l_jax.recover.real_init import Scorer, class_permutation, crop_to, medium_picks, train_images

_TAG = 0x8DED  # keeps RDED's crop draws apart from other uses of the seed
SCORERS = ("teacher", "ensemble")
SELECTIONS = ("loss", "cluster", "medoid", "median")
SCORE_VIEWS = ("padded", "decoded")
_KMEANS_ITERATIONS = 100


def pad_center(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad normalized HWC patches [N, h, w, C] to [N, size, size, C], centred."""
    h, w = x.shape[1:3]
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(x, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def select(losses: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """losses [images, crops] → (best crop of each image, the `keep` images with the lowest loss
    of their best crop, lowest first). Ties keep the earlier image / crop."""
    best_crop = np.argmin(losses, axis=1)
    best_loss = losses[np.arange(len(losses)), best_crop]
    return best_crop, np.argsort(best_loss, kind="stable")[:keep]


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The cluster (0..k-1) of each row of x [N, D]: k-means++ seeding, then Lloyd's iterations.
    Float64 sums without BLAS, so the result does not depend on the machine's thread count."""
    x = np.asarray(x, np.float64)
    first = int(rng.integers(len(x)))
    centers, d2 = [x[first]], ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(rng.choice(len(x), p=d2 / d2.sum())) if d2.sum() > 0 else int(rng.integers(len(x)))
        centers.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    centers, assign = np.stack(centers), np.full(len(x), -1)
    for _ in range(_KMEANS_ITERATIONS):
        new = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if np.any(assign == j):
                centers[j] = x[assign == j].mean(0)
    return assign


def cluster_select(best_loss: np.ndarray, features: np.ndarray, keep: int, rng: np.random.Generator,
                   medoid: bool = False) -> np.ndarray:
    """Positions of `keep` images, one per k-means cluster (k = keep) of `features`: the cluster's
    lowest-loss member, or with `medoid` the member nearest the cluster's mean; lowest loss first
    (an empty cluster's place goes to the lowest-loss image left)."""
    features = np.asarray(features, np.float64)
    assign = kmeans(features, keep, rng)
    picks = []
    for j in range(keep):
        members = np.flatnonzero(assign == j)
        if len(members):
            x = features[members]
            rank = ((x - x.mean(0)) ** 2).sum(1) if medoid else best_loss[members]
            picks.append(int(members[np.argmin(rank)]))
    taken = set(picks)
    picks += [int(i) for i in np.argsort(best_loss, kind="stable") if int(i) not in taken][:keep - len(picks)]
    return np.asarray(sorted(picks, key=lambda i: (best_loss[i], i)))


class Selector:
    """RDED's selection for one run: the train split, the scoring model and the settings."""

    def __init__(self, config, scoring_model, scoring_variables):
        rc, dc = config.recover, config.data
        if rc.rded_scorer not in SCORERS:
            raise ValueError(f"unknown recover.rded_scorer {rc.rded_scorer!r}; known: {SCORERS}")
        if rc.rded_select not in SELECTIONS:
            raise ValueError(f"unknown recover.rded_select {rc.rded_select!r}; known: {SELECTIONS}")
        if rc.rded_score_view not in SCORE_VIEWS:
            raise ValueError(f"unknown recover.rded_score_view {rc.rded_score_view!r}; known: {SCORE_VIEWS}")
        if rc.rded_factor < 1 or dc.image_size // rc.rded_factor < 1:
            raise ValueError(f"recover.rded_factor={rc.rded_factor} must be ≥ 1 and ≤ the image size")
        check_bits(rc.rded_bits, "recover.rded_bits")
        if rc.rded_bits < 8 and rc.image_format != "png":
            raise ValueError(f"recover.rded_bits={rc.rded_bits} needs recover.image_format=png: JPEG "
                             "would mix the packed bit planes")
        self.rc, self.seed, self.size, self.factor = rc, config.seed, dc.image_size, rc.rded_factor
        self.bits, self.planes = rc.rded_bits, 8 // rc.rded_bits
        self.labels, self.load = train_images(dc)
        self.scorer = Scorer(scoring_model, scoring_variables, dc.mean, dc.std)

    def candidates(self, c: int) -> tuple[np.ndarray, list[list[tuple]]]:
        """The class's pool of train indices and `rded_crops` crop boxes per pool image."""
        perm = class_permutation(self.labels, c, self.seed)
        pool = perm[np.arange(min(self.rc.rded_pool, len(perm)))]
        rng = np.random.default_rng([self.seed, _TAG, c])
        boxes = [[rrc_params(rng, self.size, self.size, tuple(self.rc.rded_crop_scale), (1.0, 1.0))
                  for _ in range(self.rc.rded_crops)] for _ in pool]
        return pool, boxes

    def scores(self, c: int, pool: np.ndarray, boxes: list[list[tuple]]) -> tuple[np.ndarray, np.ndarray]:
        """Cross-entropy on class c of every (image, crop) [images, crops], scored at size × size
        (`rded_score_view`), and the scoring model's penultimate features of each [images, crops, D]."""
        patch = self.size // self.factor
        crops = [self._as_stored(crop_to(self.load(i), box, patch))
                 for i, bs in zip(pool, boxes) for box in bs]
        if self.rc.rded_score_view == "decoded":
            x = self.scorer.normalize(np.stack([resize_image(p, (self.size, self.size)) for p in crops]))
        else:
            x = pad_center(self.scorer.normalize(np.stack(crops)), self.size)
        probs, features = self.scorer.probabilities_and_features(x)
        losses = -np.log(np.maximum(probs[:, c], 1e-30)).reshape(len(pool), -1)
        return losses, features.reshape(*losses.shape, -1)

    def _as_stored(self, patch: np.ndarray) -> np.ndarray:
        return patch if self.bits == 8 else dequantize(quantize(patch, self.bits), self.bits)

    def order(self, c: int, losses: np.ndarray, features: np.ndarray,
              keep: int) -> tuple[np.ndarray, np.ndarray]:
        """(each image's best crop, the `keep` chosen images best first) by `rded_select`."""
        best_crop, order = select(losses, keep)
        rows = np.arange(len(losses))
        if self.rc.rded_select == "median":  # medium_picks: around the median, least confident first
            order = medium_picks(-losses[rows, best_crop], keep)[::-1]
        elif self.rc.rded_select != "loss":
            order = cluster_select(losses[rows, best_crop], features[rows, best_crop], keep,
                                   np.random.default_rng([self.seed, _TAG, c, 1]),
                                   medoid=self.rc.rded_select == "medoid")
        return best_crop, order

    def class_images(self, c: int, ipc: int) -> list[dict]:
        """The class's `ipc` output images (uint8) with where their patches came from."""
        pool, boxes = self.candidates(c)
        losses, features = self.scores(c, pool, boxes)
        f2 = self.factor ** 2
        cells = f2 * self.planes
        if len(pool) < ipc * cells:
            raise ValueError(f"RDED needs {ipc * cells} images of class {c} (ipc × factor² × 8 / bits) "
                             f"but the pool has {len(pool)}; raise recover.rded_pool or lower the factor")
        best_crop, order = self.order(c, losses, features, ipc * cells)
        patch = self.size // self.factor
        out = []
        for k in range(ipc):
            picks = [order[j * ipc + k] for j in range(cells)]
            patches = [crop_to(self.load(pool[i]), boxes[i][best_crop[i]], patch) for i in picks]
            planes = [patches[p * f2] if self.factor == 1 else
                      stitch(patches[p * f2:(p + 1) * f2], self.size, self.factor)
                      for p in range(self.planes)]
            image = planes[0] if self.bits == 8 else pack(planes, self.bits)
            out.append({"image": image, "sources": [int(pool[i]) for i in picks],
                        "boxes": [list(boxes[i][best_crop[i]]) for i in picks],
                        "ce": float(np.mean([losses[i, best_crop[i]] for i in picks]))})
        return out


def recover(config, stage_dir: str, model, progress, folders: list[str]) -> tuple[list, int]:
    """Select every class's images (skipping finished classes); (the progress keys, images this
    process wrote)."""
    rc = config.recover
    scoring = (model.ensemble, model.variables) if rc.rded_scorer == "ensemble" else \
        (model.models[0], model.variables[0])
    selector = Selector(config, *scoring)
    keys = [f"class{c}" for c in range(config.data.num_classes)]
    written = 0
    for c, key in enumerate(keys):
        if key in progress.done:
            continue
        chosen = selector.class_images(c, rc.ipc)
        images = np.stack([e["image"] for e in chosen])
        probs = selector.scorer.probabilities(selector.scorer.normalize(images))
        records = []
        for k, e in enumerate(chosen):
            file = image_files.image_file(folders[c], k, rc.ipc, rc.image_format)
            if c % jax.process_count() == jax.process_index():
                image_files.save_image(os.path.join(stage_dir, "images", file), e["image"], rc.jpeg_quality)
                written += 1
            records.append({"class": c, "ipc": k, "file": file, "ce": e["ce"],
                            "teacher_pred": int(np.argmax(probs[k])), "init_sources": e["sources"],
                            "boxes": e["boxes"]})
        progress.finish(key, records)
        print(f"recover (rded): class {c + 1}/{len(keys)}, mean patch CE "
              f"{np.mean([r['ce'] for r in records]):.3f}", flush=True)
    return keys, written
