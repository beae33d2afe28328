"""Stage 2, recover: synthesize IPC images per class from the frozen squeezed model (SPEC §2).

All batches of a run form one job list. Each round runs one independent batch per device (times
`batches_per_device`) under `jax.shard_map` over every device of every host; BN statistics are
over that device's batch only, as with the authors' pmap-free single-GPU loop. Noise and
augmentation randomness come from (seed, class, ipc, iteration), so the images do not depend on
where a batch runs. In-flight rounds are checkpointed with Orbax; finished batches are recorded in
`progress.json` and skipped on restart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from sre2l_jax import checkpoint, parallel, real_init, recover_core
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.models import model_from_meta
from sre2l_jax.recover_images import class_folder_names, save_image


@dataclasses.dataclass(frozen=True)
class Batch:
    index: int
    classes: tuple[int, ...]
    ipcs: tuple[int, ...]


def plan_batches(num_classes: int, ipc: int, batch_size: int, composition: str = "sequential",
                 classwise_classes: int = 2) -> list[Batch]:
    """The run's global job list; it depends only on (classes, ipc, batch size, composition).

    sequential (the published single-GPU code): slots ordered by (ipc, class) and cut into chunks of
    `batch_size`: with ≥ batch_size classes a batch is consecutive classes at one ipc index; with
    fewer, a batch takes further ipc indices. classwise: `classwise_classes` classes ×
    batch_size/classwise_classes images (the authors' later multi-GPU variant).
    """
    if composition == "sequential":
        slots = [(c, k) for k in range(ipc) for c in range(num_classes)]
    elif composition == "classwise":
        per_class, rem = divmod(batch_size, classwise_classes)
        if rem or ipc % per_class or num_classes % classwise_classes:
            raise ValueError("classwise composition needs batch_size = classwise_classes × m with m "
                             "dividing ipc and classwise_classes dividing the class count")
        slots = [(c, k) for c0 in range(0, num_classes, classwise_classes)
                 for k0 in range(0, ipc, per_class)
                 for c in range(c0, c0 + classwise_classes) for k in range(k0, k0 + per_class)]
    else:
        raise ValueError(f"unknown recover.composition {composition!r}")
    chunks = [slots[i:i + batch_size] for i in range(0, len(slots), batch_size)]
    return [Batch(i, tuple(c for c, _ in ch), tuple(k for _, k in ch)) for i, ch in enumerate(chunks)]


def select_range(batches: list[Batch], ipc_range: tuple[int, int],
                 class_range: tuple[int, int]) -> list[Batch]:
    """Batches inside [ipc_start, ipc_end) × [class_start, class_end); a batch cut by the range is
    an error, since running part of it would change its BN statistics."""
    chosen = []
    for b in batches:
        inside = [ipc_range[0] <= k < ipc_range[1] and class_range[0] <= c < class_range[1]
                  for c, k in zip(b.classes, b.ipcs)]
        if all(inside):
            chosen.append(b)
        elif any(inside):
            raise ValueError(
                f"the ipc range {ipc_range} / class range {class_range} cuts batch {b.index} "
                f"(ipc {min(b.ipcs)}..{max(b.ipcs)}, classes {min(b.classes)}..{max(b.classes)}); "
                "choose boundaries on batch edges so each batch is recovered whole")
    return chosen


def _load_teacher(config, path: str, what: str):
    variables, meta = checkpoint.load_for_data(path, config.data, what)
    return model_from_meta(meta), variables, meta


def _round_fns(mesh, models: tuple, hp: recover_core.RecoverHParams, seed: int):
    """shard_map'd init / iterate / score functions over the leading (parallel batch) axis.

    `models`: the teachers recovery cycles through (one for SRe²L); `iterate` takes a tuple of their
    variables, `score` the variables of the first one.
    """
    data, rep = P(parallel.DATA_AXIS), P()
    shape = (hp.image_size, hp.image_size, len(hp.mean))
    tx = recover_core.optimizer(hp)

    def init_local(classes, ipcs):
        x = jax.vmap(lambda c, k: recover_core.init_images(seed, c, k, shape))(classes, ipcs)
        return x, jax.vmap(tx.init)(x)

    def iterate_local(x, opt_state, classes, ipcs, variables, t0, t1):
        def one(x, o, c, k):
            key = recover_core.batch_key(seed, c[0], k[0])
            return recover_core.run_iterations(x, o, c, key, t0, t1, model=models,
                                               variables=variables, hp=hp)
        return jax.vmap(one)(x, opt_state, classes, ipcs)

    def score_local(x, classes, variables):
        return jax.vmap(lambda xx, c: recover_core.final_scores(xx, c, models[0], variables, hp))(
            x, classes)

    smap = functools.partial(jax.shard_map, mesh=mesh)
    noise_init = jax.jit(smap(init_local, in_specs=(data, data), out_specs=data))
    given_init = jax.jit(smap(lambda x: (x, jax.vmap(tx.init)(x)), in_specs=(data,), out_specs=data))

    def init(classes, ipcs, start=None):
        return noise_init(classes, ipcs) if start is None else given_init(start)

    iterate = jax.jit(smap(iterate_local, in_specs=(data, data, data, data, rep, rep, rep),
                           out_specs=data), donate_argnums=(0, 1))
    score = jax.jit(smap(score_local, in_specs=(data, data, rep), out_specs=data))
    return init, iterate, score


def _rounds(batches: list[Batch], parallel_slots: int) -> list[list[Batch]]:
    """Group same-size batches into rounds of `parallel_slots` (all devices run equal shapes)."""
    rounds = []
    for size in sorted({len(b.classes) for b in batches}, reverse=True):
        same = [b for b in batches if len(b.classes) == size]
        rounds += [same[i:i + parallel_slots] for i in range(0, len(same), parallel_slots)]
    return rounds


class _Progress:
    """`progress.json`: finished batches with their per-image records (process 0 writes)."""

    def __init__(self, path: str, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.done: dict[str, list] = {}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("fingerprint") != fingerprint:
                raise ValueError(f"{path} belongs to a recovery with different settings; use a new "
                                 "workdir or delete the recover/ directory")
            self.done = saved["done"]

    def finish(self, batch: Batch, records: list) -> None:
        self.done[str(batch.index)] = records
        if jax.process_index() == 0:
            checkpoint.write_json_atomic(self.path, {"fingerprint": self.fingerprint, "done": self.done})


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(rc):
    """The teacher's compute dtype during recovery (`recover.compute_dtype`)."""
    if rc.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown recover.compute_dtype {rc.compute_dtype!r}; "
                         f"known: {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[rc.compute_dtype]


def recover(config, workdir: str, num_devices: int = 0, keep_float: dict | None = None) -> dict:
    """Recover the configured batches into `workdir/recover/images` and write the manifest.

    keep_float: if a dict is given, it receives {(class, ipc): last iterate in normalized space} for
    the images this host wrote (tests compare runs at float precision).
    """
    rc, dc = config.recover, config.data
    stage_dir = os.path.join(workdir, "recover")
    image_dir = os.path.join(stage_dir, "images")
    teacher_path = rc.teacher or os.path.join(workdir, "squeeze", "model")
    loaded = checkpoint.load_teachers(dc, teacher_path, rc.extra_teachers)
    models = tuple(model_from_meta(m).clone(dtype=compute_dtype(rc)) for _, m in loaded)
    teachers = tuple(v for v, _ in loaded)
    model, teacher_vars, meta = models[0], teachers[0], loaded[0][1]
    hp = recover_core.RecoverHParams.from_config(rc, dc)
    ipc_end = rc.ipc if rc.ipc_end < 0 else rc.ipc_end
    class_end = dc.num_classes if rc.class_end < 0 else rc.class_end
    all_batches = plan_batches(dc.num_classes, rc.ipc, rc.batch_size, rc.composition,
                               rc.classwise_classes)
    batches = select_range(all_batches, (rc.ipc_start, ipc_end), (rc.class_start, class_end))
    if not batches:
        raise ValueError("the ipc/class range selects no batch")
    folders = class_folder_names(meta.get("class_names") or [str(i) for i in range(dc.num_classes)])
    settings = {k: v for k, v in rc.to_dict().items() if k not in
                ("ipc_start", "ipc_end", "class_start", "class_end", "checkpoint_every")}
    fingerprint = json.dumps({"recover": settings, "seed": config.seed, "size": dc.image_size,
                              "teacher": os.path.abspath(teacher_path),
                              "extra_teachers": [os.path.abspath(p) for p in rc.extra_teachers]},
                             sort_keys=True, default=str)
    os.makedirs(stage_dir, exist_ok=True)
    progress = _Progress(os.path.join(stage_dir, "progress.json"), fingerprint)
    todo = [b for b in batches if str(b.index) not in progress.done]

    mesh = parallel.make_mesh(num_devices)
    slots = mesh.devices.size * rc.batches_per_device
    init, iterate, score = _round_fns(mesh, models, hp, config.seed)
    teachers = parallel.replicate(mesh, teachers)
    start = None
    if rc.init != "noise":
        start = real_init.start_images(config, model, teacher_vars,
                                       [(c, k) for b in todo for c, k in zip(b.classes, b.ipcs)])
    verifier = _load_teacher(config, rc.verifier, "verifier") if rc.verifier else None
    mngr = checkpoint.manager(os.path.join(stage_dir, "checkpoints"), max_to_keep=1)
    rounds = _rounds(todo, slots)
    log = MetricsLog(stage_dir, total_steps=len(rounds) * hp.iterations, stage="recover")
    n_images = sum(len(b.classes) for b in batches)
    images_done = n_images - sum(len(b.classes) for b in todo)
    chunk = max(1, min(config.log_every_steps, rc.checkpoint_every, hp.iterations))
    t_start = time.time()

    for r, jobs in enumerate(rounds):
        padded = jobs + [jobs[-1]] * (slots - len(jobs))  # idle devices redo a job; result dropped
        classes = parallel.shard_host_identical(mesh, np.asarray([b.classes for b in padded], np.int32))
        ipcs = parallel.shard_host_identical(mesh, np.asarray([b.ipcs for b in padded], np.int32))
        x0 = None if start is None else parallel.shard_host_identical(mesh, np.stack(
            [np.stack([start.image(ck) for ck in zip(b.classes, b.ipcs)]) for b in padded]))
        x, opt_state = init(classes, ipcs, x0)
        t = 0
        round_ids = [b.index for b in padded]
        latest = checkpoint.latest_extra(mngr)
        if latest is not None and latest[1].get("round_ids") == round_ids:
            _, (x, opt_state), extra = checkpoint.restore_state(mngr, (x, opt_state), latest[0])
            t = extra["t"]
            print(f"recover: resumed batches {[b.index for b in jobs]} at iteration {t}", flush=True)
        while t < hp.iterations:
            t1 = min(hp.iterations, (t // chunk + 1) * chunk)
            x, opt_state, metrics = iterate(x, opt_state, classes, ipcs, teachers,
                                            jnp.int32(t), jnp.int32(t1))
            t = t1
            n_real = len(jobs)
            m = jax.tree.map(lambda a, n=n_real: float(np.mean(np.asarray(a)[:n])),
                             multihost_utils.process_allgather(metrics, tiled=True))
            log.write(r * hp.iterations + t, **m, lr=float(recover_core.cosine_lr(hp)(t - 1)),
                      images_done=images_done, images_total=n_images)
            if t % rc.checkpoint_every == 0 and t < hp.iterations:
                # The step only has to grow across restarts: finished batches never shrink.
                checkpoint.save_state(mngr, len(progress.done) * hp.iterations + t, (x, opt_state),
                                      {"round_ids": round_ids, "t": t}, force=True)
        records = _finish_round(jobs, x, classes, score, teachers[0], verifier, hp, rc,
                                image_dir, folders, mesh, keep_float, start)
        for b in jobs:
            progress.finish(b, records[b.index])
        images_done += sum(len(b.classes) for b in jobs)
    mngr.wait_until_finished()
    mngr.close()

    # The manifest covers every finished batch, so runs over ipc/class ranges fill in one set.
    entries = [e for b in all_batches if str(b.index) in progress.done
               for e in progress.done[str(b.index)]]
    summary = {
        "images": len(entries), "image_dir": image_dir,
        "teacher_accuracy": 100.0 * float(np.mean([e["teacher_pred"] == e["class"] for e in entries])),
        "mean_final_ce": float(np.mean([e["ce"] for e in entries])),
        "seconds_this_run": time.time() - t_start, "teacher": teacher_path,
    }
    if verifier is not None:
        summary["verifier_accuracy"] = 100.0 * float(np.mean([e["verifier_pred"] == e["class"]
                                                              for e in entries]))
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(os.path.join(stage_dir, "manifest.json"), {
            "config": config.to_dict(), "summary": summary, "class_folders": folders,
            "images": entries})
    logging.info("recover: %s", summary)
    return summary


def _finish_round(jobs, x, classes, score, teacher_vars, verifier, hp, rc, image_dir, folders,
                  mesh, keep_float, starts) -> dict[int, list]:
    """Score the final images, write this host's files, return every job's per-image records."""
    scores = multihost_utils.process_allgather(score(x, classes, teacher_vars), tiled=True)
    if verifier is not None:
        v_model, v_vars, _ = verifier
        _, _, v_score = _round_fns(mesh, (v_model,), hp, 0)
        v_pred = multihost_utils.process_allgather(
            v_score(x, classes, parallel.replicate(mesh, v_vars)), tiled=True)["pred"]
    ext = "png" if rc.image_format == "png" else "jpg"
    width = max(3, len(str(rc.ipc - 1)))
    for shard in x.addressable_shards:  # each host writes only the batches its devices ran
        start = shard.index[0].start or 0
        for offset, images in enumerate(np.asarray(shard.data)):
            slot = start + offset
            if slot >= len(jobs):
                continue
            batch = jobs[slot]
            if keep_float is not None:
                keep_float.update({(c, k): im for c, k, im in zip(batch.classes, batch.ipcs, images)})
            for c, k, img in zip(batch.classes, batch.ipcs, recover_core.to_uint8(images, hp)):
                path = os.path.join(image_dir, folders[c], f"{k:0{width}d}.{ext}")
                save_image(path, img, rc.jpeg_quality)
    records = {}
    for slot, batch in enumerate(jobs):
        records[batch.index] = [
            {"class": c, "ipc": k, "file": os.path.join(folders[c], f"{k:0{width}d}.{ext}"),
             "ce": float(scores["ce"][slot][i]), "bn_loss": float(scores["bn"][slot][i]),
             "teacher_pred": int(scores["pred"][slot][i]),
             **({"init_sources": starts.sources[(c, k)]} if starts is not None else {}),
             **({"verifier_pred": int(v_pred[slot][i])} if verifier is not None else {})}
            for i, (c, k) in enumerate(zip(batch.classes, batch.ipcs))]
    multihost_utils.sync_global_devices("recover_round_written")
    return records
