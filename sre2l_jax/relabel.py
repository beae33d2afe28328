"""Stage 3, relabel: store the teacher's soft labels FKD-style so students train without the teacher.

Every epoch of the student recipe (`student.*`) gets one file of crops, flips, mixing and teacher
logits (`formats/labels.py`). The plan and batch order come from (config.seed, epoch, batch),
exactly as validate's online mode draws them, so a student on these labels replays the online run
of seed `config.seed`. Epochs already written are kept on restart.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import numpy as np
from absl import logging

from sre2l_jax import parallel, stage_state, teachers
from sre2l_jax.formats import images as image_files
from sre2l_jax.formats import labels as label_files
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.student import data as student_data
from sre2l_jax.student.plans import AugSpec, epoch_order, first_batch_shape
from sre2l_jax.student.steps import Recipe, Steps


def settings(config) -> dict:
    """What stored labels depend on besides their inputs: the batch plan, not the optimizer."""
    return stage_state.settings(config, "data", "relabel", plan=AugSpec.from_config(config))


def unread(config) -> str:
    """Why `all` would write labels nobody reads ("" when validate reads them)."""
    if config.validate.labels == "stored":
        return ""
    return ("validate.labels is 'online': the students take the teacher's soft labels inside each "
            "step (--config.validate.labels=stored trains on stored labels and runs relabel)")


def run(config, workdir: str) -> dict:
    """Write `W/relabel/epoch_*.npz` + `meta.json`."""
    label_dir = os.path.join(workdir, "relabel")
    model = teachers.load(config, workdir)
    source = image_files.load_synthetic(config, workdir, model.meta)
    spec = AugSpec.from_config(config)
    inputs = {"images": student_data.fingerprint(source), "teachers": model.fingerprint()}
    stage_state.Claim(label_dir, {**settings(config), "inputs": inputs}, "stored labels").take()
    meta = {"plan": dataclasses.asdict(spec), **inputs, "seed": config.seed,
            "num_classes": config.data.num_classes, "top_k": config.relabel.top_k,
            "temperature": config.student.temperature, "teacher": model.paths[0],
            "fill_logit": label_files.FILL_LOGIT, "complete": False}
    if jax.process_index() == 0:
        label_files.write_meta(label_dir, meta)
    t0 = time.time()
    _write_epochs(config, label_dir, spec, model, source)

    files = [label_files.epoch_path(label_dir, e) for e in range(spec.epochs)]
    storage = int(sum(os.path.getsize(p) for p in files if os.path.exists(p)))
    per_image_epoch = storage / max(spec.epochs * len(source), 1)
    projected = per_image_epoch * config.recover.ipc * config.data.num_classes * spec.epochs
    meta.update(complete=True, storage_bytes=storage, bytes_per_epoch=storage / max(spec.epochs, 1),
                bytes_per_image_epoch=per_image_epoch, projected_bytes=projected)
    if jax.process_index() == 0:
        label_files.write_meta(label_dir, meta)
    k = f"top-{config.relabel.top_k} logits" if config.relabel.top_k else "full logits"
    print(f"relabel: {spec.epochs} epochs of {k} for {len(source)} images in {label_dir}: "
          f"{storage / 2**20:.2f} MiB ({per_image_epoch:.0f} bytes per image-epoch; IPC "
          f"{config.recover.ipc} × {config.data.num_classes} classes × {spec.epochs} epochs: "
          f"{projected / 2**20:.1f} MiB)", flush=True)
    summary = {"epochs": spec.epochs, "storage_bytes": storage, "num_images": len(source),
               "bytes_per_image_epoch": per_image_epoch, "projected_bytes": projected,
               "seconds_this_run": time.time() - t0, "dir": label_dir}
    logging.info("relabel: %s", summary)
    return summary


def _write_epochs(config, label_dir: str, spec: AugSpec, model: teachers.Teachers, source) -> None:
    """Label every epoch whose file is missing (files are written atomically: present = complete).

    Epochs are independent, so consecutive ones label at the same time on different lanes
    (`parallel.lane_meshes`: 25-image batches do not split over 2 CPU devices); each lane runs the
    one-lane program, so the files do not depend on how many lanes there are."""
    lanes = [_LabelLane(config, spec, model, source, mesh)
             for mesh in parallel.lane_meshes(config.num_devices, batch=spec.batch_size)]
    todo = [e for e in range(spec.epochs) if not os.path.exists(label_files.epoch_path(label_dir, e))]
    if todo:
        shape = first_batch_shape(config.data, lanes[0].data.bounds)
        parallel.compile_at_once([functools.partial(lane.steps.compile_label, lane.teacher_vars, shape)
                                  for lane in lanes[:len(todo)]])
    box_dtype = np.int16 if config.data.image_size <= np.iinfo(np.int16).max else np.int32
    log = MetricsLog(label_dir, total_steps=spec.epochs, stage="relabel")
    for first in range(0, len(todo), len(lanes)):
        # Dispatch every lane's epoch before reading any back: the lanes' devices work meanwhile.
        pending = [(epoch, lane.label_epoch(epoch)) for epoch, lane in zip(todo[first:], lanes)]
        for epoch, batches in pending:
            rows = [{"order": order, "logits": np.asarray(logits),
                     **{k: np.asarray(v) for k, v in parallel.to_host(plan).items()}}
                    for order, plan, logits in batches]
            if jax.process_index() == 0:
                label_files.write_epoch(label_dir, epoch, label_files.epoch_arrays(
                    rows, config.relabel.top_k, config.data.num_classes, box_dtype))
            log.write(epoch + 1, batches=len(batches))
    log.close()


class _LabelLane:
    """The teacher, the labelling step and the images on one lane's devices."""

    def __init__(self, config, spec: AugSpec, model: teachers.Teachers, source, mesh) -> None:
        self.seed, self.num_images, self.mesh = config.seed, len(source), mesh
        self.steps = Steps(Recipe(None, model.ensemble, None, spec, config.student.temperature, False),
                           mesh, None)
        self.data = student_data.StudentData(source, config.data.image_size, mesh, spec.batch_size,
                                             config.student.data_workers, config.student.data_prefetch)
        self.teacher_vars = parallel.replicate(mesh, model.variables)

    def label_epoch(self, epoch: int) -> list:
        """[(train order of the batch, plan, logits)] for every batch, still on the devices."""
        order = epoch_order(self.seed, epoch, self.num_images)
        batches = []
        for b, images, _ in self.data.epoch(order):
            s, e = self.data.bounds[b]
            ids = parallel.replicate(self.mesh, np.asarray([self.seed, epoch, b], np.int32))
            plan, logits = self.steps.label(self.teacher_vars, images, ids)
            batches.append((order[s:e], plan, logits))
        return batches
