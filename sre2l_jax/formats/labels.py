"""Stored soft labels on disk (FKD style): one `.npz` per epoch plus `meta.json`.

`W/relabel/epoch_<e>.npz` (plain NumPy, written atomically) holds, in visiting order:
  order        int32 [N]      image index of each position
  boxes        int16 [N,4]    RandomResizedCrop (top, left, h, w) in pixels of the stored image
  flips        bool  [N]      horizontal flip
  mix_perm     int32 [N]      mixing partner, as a position inside the same batch
  mix_lambda   f32   [nb]     label weight of the original image, per batch (1: not mixed)
  mix_box      int16 [nb,4]   CutMix box (y1, x1, y2, x2), per batch (zeros: none)
  ra_ops, ra_signs  int8, bool [N,k]  RandAugment's operations and signs (only with RandAugment)
  logits       f16   [N,C]    the teacher's logits on the augmented, mixed image (top_k = 0), or
  topk_values  f16   [N,k] and topk_indices int16/int32 [N,k] (top_k > 0).
Batch b covers positions [b·B, min((b+1)·B, N)) with B = the plan's batch_size in meta.json.

`meta.json` says what the labels replay: the student batch plan (`AugSpec`), the content hashes of
the images and teachers, the seed, k, and whether every epoch is written.

Top-k: the reader fills the missing classes with FILL_LOGIT (−1e9, "−inf-like"), so softmax(t/τ)
gives them exactly zero mass: the target is the teacher's top-k distribution renormalized. Filling
with the smallest stored logit instead would hand every missing class as much mass as the k-th one,
which at τ = 20 and 1000 classes would outweigh the stored classes.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from sre2l_jax.stage_state import (
    canonical,
    describe_diff,
    read_json,
    read_npz,
    write_json_atomic,
    write_npz_atomic,
)
from sre2l_jax.student.plans import AugSpec, batch_bounds

FILL_LOGIT = -1e9
META = "meta.json"
# The meta.json fields that decide the label values (the rest describes the files).
IDENTITY = ("plan", "images", "teachers", "seed", "top_k")


def epoch_path(label_dir: str, epoch: int) -> str:
    return os.path.join(label_dir, f"epoch_{epoch:05d}.npz")


def write_meta(label_dir: str, meta: dict) -> None:
    write_json_atomic(os.path.join(label_dir, META), meta)


def epoch_arrays(rows: list[dict], top_k: int, num_classes: int, box_dtype) -> dict:
    """One epoch's arrays from its batches' rows (order, plan, float32 logits)."""
    cat = lambda k: np.concatenate([r[k] for r in rows])
    logits = cat("logits")
    out = {"order": cat("order").astype(np.int32), "boxes": cat("boxes").astype(box_dtype),
           "flips": cat("flips").astype(bool), "mix_perm": cat("perm").astype(np.int32),
           "mix_lambda": np.asarray([r["lam"] for r in rows], np.float32),
           "mix_box": np.stack([r["box"] for r in rows]).astype(box_dtype)}
    if "ra_ops" in rows[0]:
        out["ra_ops"], out["ra_signs"] = cat("ra_ops").astype(np.int8), cat("ra_signs").astype(bool)
    if top_k:
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
        out["topk_values"] = np.take_along_axis(logits, idx, axis=1).astype(np.float16)
        out["topk_indices"] = idx.astype(np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32)
        stored = out["topk_values"]
    else:
        out["logits"] = stored = logits.astype(np.float16)
    if not np.all(np.isfinite(stored)):
        raise FloatingPointError("teacher logits are NaN or overflow float16; check the teacher")
    return out


def write_epoch(label_dir: str, epoch: int, arrays: dict) -> None:
    write_npz_atomic(epoch_path(label_dir, epoch), arrays)


def read_epoch(label_dir: str, epoch: int) -> dict:
    """The raw arrays of one epoch file."""
    arrays = read_npz(epoch_path(label_dir, epoch))
    if arrays is None:
        raise FileNotFoundError(f"{epoch_path(label_dir, epoch)} does not exist")
    return arrays


def full_logits(arrays: dict, num_classes: int) -> np.ndarray:
    """float32 [N,C] logits from an epoch file; top-k files get FILL_LOGIT elsewhere."""
    if "logits" in arrays:
        return arrays["logits"].astype(np.float32)
    values, idx = arrays["topk_values"], arrays["topk_indices"].astype(np.int64)
    out = np.full((len(values), num_classes), FILL_LOGIT, np.float32)
    np.put_along_axis(out, idx, values.astype(np.float32), axis=1)
    return out


class StoredLabels:
    """The reading side, checked against the student run that wants to replay the labels."""

    def __init__(self, label_dir: str, spec: AugSpec, images_hash: str, teachers_hash: str):
        self.meta = read_json(os.path.join(label_dir, META))
        if self.meta is None:
            raise FileNotFoundError(f"no stored labels in {label_dir} ({META} missing); run the "
                                    "relabel stage first or set validate.labels='online'")
        if self.meta["images"] != images_hash:
            raise ValueError(f"the labels in {label_dir} were made for other synthetic images "
                             f"(fingerprint {self.meta['images']}, the images now give "
                             f"{images_hash}); rerun the relabel stage")
        wanted = canonical(dataclasses.asdict(spec))
        if self.meta["plan"] != wanted:
            raise ValueError(f"the labels in {label_dir} were made for another student batch plan "
                             f"({describe_diff(self.meta['plan'], wanted)}); rerun the relabel stage")
        if self.meta["teachers"] != teachers_hash:
            logging.warning("relabel: the stored labels came from a different teacher checkpoint")
        missing = [e for e in range(spec.epochs) if not os.path.isfile(epoch_path(label_dir, e))]
        if missing:
            raise ValueError(f"{label_dir} lacks {epoch_path(label_dir, missing[0])} and "
                             f"{len(missing) - 1} more; rerun the relabel stage to finish it")
        self.dir, self.num_classes, self.batch_size = label_dir, self.meta["num_classes"], spec.batch_size
        self.identity = {k: self.meta[k] for k in IDENTITY}
        self.top_k = self.meta["top_k"]  # > 0: unstored classes hold FILL_LOGIT

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, dict, np.ndarray]]:
        """[(image indices, plan, float32 logits [B,C])] for each batch of `epoch`."""
        arrays = read_epoch(self.dir, epoch)
        logits = full_logits(arrays, self.num_classes)
        out = []
        for b, (s, e) in enumerate(batch_bounds(len(arrays["order"]), self.batch_size)):
            plan = {"boxes": arrays["boxes"][s:e].astype(np.int32), "flips": arrays["flips"][s:e],
                    "perm": arrays["mix_perm"][s:e], "lam": arrays["mix_lambda"][b],
                    "box": arrays["mix_box"][b].astype(np.int32)}
            if "ra_ops" in arrays:
                plan["ra_ops"] = arrays["ra_ops"][s:e].astype(np.int32)
                plan["ra_signs"] = arrays["ra_signs"][s:e]
            out.append((arrays["order"][s:e], plan, logits[s:e]))
        return out
