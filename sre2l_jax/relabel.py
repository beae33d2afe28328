"""Stage 3, relabel: store the teacher's soft labels FKD-style so students train without the teacher.

For each of `relabel.epochs` epochs, `W/relabel/epoch_<e>.npz` (plain NumPy, written to a temp name
then renamed) holds, in visiting order:
  order        int32 [N]      image index of each position
  boxes        int16 [N,4]    RandomResizedCrop (top, left, h, w) in pixels of the stored image
  flips        bool  [N]      horizontal flip
  mix_perm     int32 [N]      mixing partner, as a position inside the same batch
  mix_lambda   f32   [nb]     label weight of the original image, per batch (1: not mixed)
  mix_box      int16 [nb,4]   CutMix box (y1, x1, y2, x2), per batch (zeros: none)
  logits       f16   [N,C]    the teacher's logits on the augmented, mixed image (top_k = 0), or
  topk_values  f16   [N,k] and topk_indices int16/int32 [N,k] (top_k > 0).
Batch b covers positions [b·B, min((b+1)·B, N)) with B = meta.json's batch_size.

Top-k: the reader fills the missing classes with FILL_LOGIT (−1e9, "−inf-like"), so softmax(t/τ)
gives them exactly zero mass: the target is the teacher's top-k distribution renormalized. Filling
with the smallest stored logit instead would hand every missing class as much mass as the k-th one,
which at τ = 20 and 1000 classes would outweigh the stored classes.

The plan and batch order come from (config.seed, epoch, batch), exactly as validate's online mode
draws them, so a student on these labels replays the online run of seed `config.seed`.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging

from sre2l_jax import checkpoint, parallel, student
from sre2l_jax.metrics import MetricsLog

FILL_LOGIT = -1e9
META = "meta.json"


def epoch_path(stage_dir: str, epoch: int) -> str:
    return os.path.join(stage_dir, f"epoch_{epoch:05d}.npz")


def label_settings(config, images: np.ndarray, labels: np.ndarray, teacher_vars: dict) -> dict:
    """What stored labels depend on; a reader with other settings must not use them."""
    rl, d = config.relabel, config.data
    return {"images_fingerprint": student.fingerprint(images, labels),
            "teacher_fingerprint": student.fingerprint(teacher_vars), "num_images": len(images),
            "num_classes": d.num_classes, "image_size": d.image_size, "batch_size": rl.batch_size,
            "seed": config.seed, "crop_scale": list(rl.crop_scale), "mix": rl.mix,
            "mix_alpha": rl.mix_alpha, "mix_prob": rl.mix_prob, "top_k": rl.top_k}


def _write_npz(path: str, arrays: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _epoch_arrays(rows: list[dict], top_k: int, num_classes: int, box_dtype) -> dict:
    cat = lambda k: np.concatenate([r[k] for r in rows])
    logits = cat("logits")
    out = {"order": cat("order").astype(np.int32), "boxes": cat("boxes").astype(box_dtype),
           "flips": cat("flips").astype(bool), "mix_perm": cat("perm").astype(np.int32),
           "mix_lambda": np.asarray([r["lam"] for r in rows], np.float32),
           "mix_box": np.stack([r["box"] for r in rows]).astype(box_dtype)}
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


def relabel(config, workdir: str, num_devices: int = 0) -> dict:
    """Write `W/relabel/epoch_*.npz` + `meta.json`; epochs already written are kept on restart."""
    rl = config.relabel
    stage_dir = os.path.join(workdir, "relabel")
    teacher, teacher_vars, teacher_meta, teacher_path = student.load_teacher(config, workdir)
    images, labels = student.load_synthetic(config, workdir, teacher_meta)
    settings = label_settings(config, images, labels, teacher_vars)
    meta_path = os.path.join(stage_dir, META)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old["settings"] != settings:
            raise ValueError(f"{stage_dir} holds labels for other settings or images "
                             f"({_diff(old['settings'], settings)}); delete it or use a new workdir")
    os.makedirs(stage_dir, exist_ok=True)
    meta = {"config": config.to_dict(), "settings": settings, "temperature": rl.temperature,
            "epochs": rl.epochs, "teacher": os.path.abspath(teacher_path), "fill_logit": FILL_LOGIT,
            "complete": False}
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(meta_path, meta)

    mesh = parallel.make_mesh(num_devices)
    recipe = student.Recipe(None, teacher, None, student.AugSpec.from_config(config),
                            rl.temperature, False)
    steps = student.Steps(recipe, mesh, None)
    images_dev = parallel.replicate(mesh, images)
    teacher_vars = parallel.replicate(mesh, teacher_vars)
    bounds = student.batch_bounds(len(images), rl.batch_size)
    box_dtype = np.int16 if max(images.shape[1:3]) <= np.iinfo(np.int16).max else np.int32
    log = MetricsLog(stage_dir, total_steps=rl.epochs, stage="relabel")
    t0 = time.time()
    for epoch in range(rl.epochs):
        path = epoch_path(stage_dir, epoch)
        if os.path.exists(path):  # written atomically, so it is complete
            continue
        order = student.epoch_order(config.seed, epoch, len(images))
        rows = []
        for b, (s, e) in enumerate(bounds):
            ids = parallel.replicate(mesh, np.asarray([config.seed, epoch, b], np.int32))
            plan, logits = steps.label(teacher_vars, images_dev, steps.place(order[s:e]), ids)
            rows.append({"order": order[s:e], "logits": np.asarray(logits),
                         **{k: np.asarray(v) for k, v in parallel.to_host(plan).items()}})
        if jax.process_index() == 0:
            _write_npz(path, _epoch_arrays(rows, rl.top_k, config.data.num_classes, box_dtype))
        log.write(epoch + 1, batches=len(bounds))

    files = [epoch_path(stage_dir, e) for e in range(rl.epochs)]
    storage = int(sum(os.path.getsize(p) for p in files if os.path.exists(p)))
    meta.update(complete=True, storage_bytes=storage, bytes_per_epoch=storage / max(rl.epochs, 1))
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(meta_path, meta)
    print(f"relabel: {rl.epochs} epochs of labels for {len(images)} images in {stage_dir}: "
          f"{storage / 2**20:.2f} MiB in total ({storage} bytes)", flush=True)
    summary = {"epochs": rl.epochs, "storage_bytes": storage, "num_images": len(images),
               "seconds_this_run": time.time() - t0, "dir": stage_dir}
    logging.info("relabel: %s", summary)
    return summary


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys)


class StoredLabels:
    """Read-side of the relabel directory, checked against the run that wants to use it."""

    def __init__(self, stage_dir: str, expected: dict, epochs: int):
        meta_path = os.path.join(stage_dir, META)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no stored labels in {stage_dir} ({META} missing); run the "
                                    "relabel stage first or set validate.labels='online'")
        with open(meta_path) as f:
            self.meta = json.load(f)
        stored = self.meta["settings"]
        if stored["images_fingerprint"] != expected["images_fingerprint"]:
            raise ValueError(f"the labels in {stage_dir} were made for other synthetic images "
                             f"(fingerprint {stored['images_fingerprint']}, the images now give "
                             f"{expected['images_fingerprint']}); rerun the relabel stage")
        skip = {"seed", "top_k", "teacher_fingerprint"}  # the labels carry their own seed and k
        diff = {k: v for k, v in expected.items() if k not in skip and stored.get(k) != v}
        if diff:
            raise ValueError(f"the labels in {stage_dir} do not fit this run: "
                             f"{_diff({k: stored.get(k) for k in diff}, diff)} (relabel.batch_size "
                             "must equal validate.batch_size); rerun the relabel stage")
        if stored["teacher_fingerprint"] != expected["teacher_fingerprint"]:
            logging.warning("relabel: the stored labels came from a different teacher checkpoint")
        if self.meta["epochs"] < epochs:
            raise ValueError(f"{stage_dir} holds {self.meta['epochs']} epochs of labels but "
                             f"validate.epochs={epochs}; set relabel.epochs ≥ validate.epochs")
        missing = [e for e in range(epochs) if not os.path.isfile(epoch_path(stage_dir, e))]
        if missing:
            raise ValueError(f"{stage_dir} lacks {epoch_path(stage_dir, missing[0])} and "
                             f"{len(missing) - 1} more; rerun the relabel stage to finish it")
        self.dir, self.num_classes = stage_dir, stored["num_classes"]
        self.batch_size = stored["batch_size"]

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, dict, np.ndarray]]:
        """[(image indices, plan, float32 logits [B,C])] for each batch of `epoch`."""
        with np.load(epoch_path(self.dir, epoch)) as z:
            arrays = {k: z[k] for k in z.files}
        logits = full_logits(arrays, self.num_classes)
        out = []
        for b, (s, e) in enumerate(student.batch_bounds(len(arrays["order"]), self.batch_size)):
            plan = {"boxes": arrays["boxes"][s:e].astype(np.int32), "flips": arrays["flips"][s:e],
                    "perm": arrays["mix_perm"][s:e], "lam": arrays["mix_lambda"][b],
                    "box": arrays["mix_box"][b].astype(np.int32)}
            out.append((arrays["order"][s:e], plan, logits[s:e]))
        return out


def full_logits(arrays: dict, num_classes: int) -> np.ndarray:
    """float32 [N,C] logits from an epoch file; top-k files get FILL_LOGIT elsewhere."""
    if "logits" in arrays:
        return arrays["logits"].astype(np.float32)
    values, idx = arrays["topk_values"], arrays["topk_indices"].astype(np.int64)
    out = np.full((len(values), num_classes), FILL_LOGIT, np.float32)
    np.put_along_axis(out, idx, values.astype(np.float32), axis=1)
    return out


def read_epoch(stage_dir: str, epoch: int) -> dict:
    """The raw arrays of one epoch file (for inspection; training goes through StoredLabels)."""
    with np.load(epoch_path(stage_dir, epoch)) as z:
        return {k: z[k] for k in z.files}
