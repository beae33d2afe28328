"""Stage 2, recover: synthesize IPC images per class from the frozen squeezed model (SPEC §2).

All batches of a run form one job list (`plan.py`). Each round runs one independent batch per
device (times `batches_per_device`) on every device of every host, each device running the same
single-device program (`parallel.PerDevice`); BN statistics are over that device's batch only, as
with the authors' single-GPU loop. Noise and augmentation randomness come from (seed, class, ipc,
iteration), so the images do not depend on where, or beside how many others, a batch runs.
In-flight rounds are checkpointed with Orbax; finished batches are recorded in `progress.json`
and skipped on restart.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sre2l_jax import checkpoint, parallel, stage_state, teachers
from sre2l_jax.formats import images as image_files
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.recover import class_stats, objective, plan, rded, real_init

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def settings(config) -> dict:
    return stage_state.settings(config, "data", "recover")


def compute_dtype(rc):
    """The teacher's compute dtype during recovery (`recover.compute_dtype`)."""
    if rc.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown recover.compute_dtype {rc.compute_dtype!r}; "
                         f"known: {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[rc.compute_dtype]


def _score_fn(model, hp: objective.RecoverHParams) -> parallel.PerDevice:
    """Final scores of a device's slots under `model` (the teacher or the verifier)."""
    def score_local(x, classes, variables):
        return jax.vmap(lambda xx, c: objective.final_scores(xx, c, model, variables, hp))(x, classes)

    return parallel.PerDevice(score_local)


def _round_fns(models: tuple, hp: objective.RecoverHParams, seed: int):
    """init / iterate of a device's slots (leading axis: the batches it runs this round)."""
    shape = (hp.image_size, hp.image_size, len(hp.mean))
    tx = objective.optimizer(hp)

    def init_local(classes, ipcs):
        x = jax.vmap(lambda c, k: objective.init_images(seed, c, k, shape))(classes, ipcs)
        return x, jax.vmap(tx.init)(x)

    def start_local(x):
        return x, jax.vmap(tx.init)(x)

    def iterate_local(x, opt_state, classes, ipcs, variables, t0, t1):
        def one(x, o, c, k):
            key = objective.batch_key(seed, c[0], k[0])
            return objective.run_iterations(x, o, c, key, t0, t1, models=models,
                                            variables=variables, hp=hp)
        return jax.vmap(one)(x, opt_state, classes, ipcs)

    noise_init, given_init = parallel.PerDevice(init_local), parallel.PerDevice(start_local)

    def init(mesh, classes, ipcs, start=None):
        return noise_init(mesh, classes, ipcs) if start is None else given_init(mesh, start)

    return init, parallel.PerDevice(iterate_local, donate_argnums=(0, 1))


def _with_class_stats(config, stage_dir: str, model: teachers.Teachers) -> tuple:
    """The teachers' variables, each with its class-conditional statistics when the BN loss
    uses them (`recover.alpha_class` > 0; computed once per teacher and data, then cached)."""
    if not config.recover.alpha_class:
        return model.variables
    workdir = os.path.dirname(stage_dir)
    stats = [class_stats.compute(config, workdir, i, m.clone(dtype=jnp.float32), v)
             for i, (m, v) in enumerate(zip(model.models, model.variables))]
    return tuple({**v, objective.CLASS_STATS: s} for v, s in zip(model.variables, stats))


class _Recovery:
    """What every round of one run shares: compiled functions, teachers on the mesh, outputs."""

    def __init__(self, config, stage_dir: str, model: teachers.Teachers, todo: list[plan.Batch],
                 n_images: int, folders: list[str]):
        rc = config.recover
        self.config, self.rc, self.stage_dir = config, rc, stage_dir
        self.hp = objective.RecoverHParams.from_config(config)
        self.mesh = parallel.make_mesh(config.num_devices,
                                       jobs=-(-len(todo) // rc.batches_per_device))
        self.slots = self.mesh.devices.size * rc.batches_per_device
        self.init, self.iterate = _round_fns(model.models, self.hp, config.seed)
        self.score = _score_fn(model.models[0], self.hp)
        self.teacher_vars = parallel.replicate(self.mesh, _with_class_stats(config, stage_dir, model))
        self.start = None
        if rc.init != "noise":
            self.start = real_init.start_images(config, model.models[0], model.variables[0],
                                                [(c, k) for b in todo for c, k in zip(b.classes, b.ipcs)])
        self.verifier = None
        if rc.verifier:
            v = teachers.load_one(rc.verifier, config.data, "verifier")
            self.verifier = (_score_fn(v.models[0], self.hp),
                             parallel.replicate(self.mesh, v.variables[0]))
        self.folders = folders
        self.mngr = checkpoint.manager(os.path.join(stage_dir, "checkpoints"), max_to_keep=1)
        self.rounds = plan.rounds(todo, self.slots)
        self.log = MetricsLog(stage_dir, total_steps=len(self.rounds) * self.hp.iterations,
                              stage="recover")
        self.n_images = n_images
        self.images_done = n_images - sum(len(b.classes) for b in todo)
        self.written = 0  # by this process

    def _placed(self, padded: list[plan.Batch]):
        classes = parallel.shard_host_identical(self.mesh, np.asarray([b.classes for b in padded], np.int32))
        ipcs = parallel.shard_host_identical(self.mesh, np.asarray([b.ipcs for b in padded], np.int32))
        x0 = None if self.start is None else parallel.shard_host_identical(self.mesh, np.stack(
            [np.stack([self.start.image(ck) for ck in zip(b.classes, b.ipcs)]) for b in padded]))
        return classes, ipcs, x0

    def run_round(self, r: int, jobs: list[plan.Batch], finished_batches: int) -> dict[int, list]:
        """Recover one round's batches from their start (or checkpoint); returns their records."""
        hp = self.hp
        padded = jobs + [jobs[-1]] * (self.slots - len(jobs))  # idle devices redo a job; dropped
        classes, ipcs, x0 = self._placed(padded)
        x, opt_state = self.init(self.mesh, classes, ipcs, x0)
        t, round_ids = 0, [b.index for b in padded]
        latest = checkpoint.latest_extra(self.mngr)
        if latest is not None and latest[1].get("round_ids") == round_ids:
            _, (x, opt_state), extra = checkpoint.restore_state(self.mngr, (x, opt_state), latest[0])
            t = extra["t"]
            print(f"recover: resumed batches {[b.index for b in jobs]} at iteration {t}", flush=True)
        elif latest is not None:  # another round, or the same batches on another device count
            for step in self.mngr.all_steps():
                self.mngr.delete(step)
        chunk = max(1, min(self.config.log_every_steps, self.rc.checkpoint_every, hp.iterations))
        while t < hp.iterations:
            t1 = min(hp.iterations, (t // chunk + 1) * chunk)
            x, opt_state, metrics = self.iterate(self.mesh, x, opt_state, classes, ipcs,
                                                 self.teacher_vars, np.int32(t), np.int32(t1))
            t = t1
            m = jax.tree.map(lambda a: float(np.mean(np.asarray(a)[:len(jobs)])),
                             parallel.gather_hosts(metrics, "recover_metrics"))
            finished = sum(len(b.classes) for b in jobs) if t == hp.iterations else 0
            self.log.write(r * hp.iterations + t, **m, lr=float(objective.cosine_lr(hp)(t - 1)),
                           images_done=self.images_done + finished, images_total=self.n_images)
            if t % self.rc.checkpoint_every == 0 and t < hp.iterations:
                # The step only has to grow across restarts: finished batches never shrink.
                checkpoint.save_state(self.mngr, finished_batches * hp.iterations + t, (x, opt_state),
                                      {"round_ids": round_ids, "t": t}, force=True)
        records = self._finish_round(jobs, x, classes)
        self.images_done += sum(len(b.classes) for b in jobs)
        return records

    def _write_images(self, jobs: list[plan.Batch], x) -> None:
        """Write the images of the batches this host's devices ran."""
        rc = self.rc
        for shard in x.addressable_shards:
            start = shard.index[0].start or 0
            for offset, images in enumerate(np.asarray(shard.data)):
                if start + offset >= len(jobs):
                    continue
                batch = jobs[start + offset]
                for c, k, img, raw in zip(batch.classes, batch.ipcs,
                                          objective.to_uint8(images, self.hp), images):
                    path = os.path.join(self.stage_dir, "images", image_files.image_file(
                        self.folders[c], k, rc.ipc, rc.image_format))
                    image_files.save_image(path, img, rc.jpeg_quality)
                    self.written += 1
                    if rc.save_float:
                        image_files.save_float(path, raw)

    def _finish_round(self, jobs: list[plan.Batch], x, classes) -> dict[int, list]:
        """Score the final images, write this host's files, return every job's per-image records."""
        scores = parallel.gather_hosts(self.score(self.mesh, x, classes, self.teacher_vars[0]),
                                       "recover_scores")
        v_pred = None
        if self.verifier is not None:
            v_score, v_vars = self.verifier
            v_pred = parallel.gather_hosts(v_score(self.mesh, x, classes, v_vars),
                                           "recover_verifier")["pred"]
        self._write_images(jobs, x)
        records = {}
        for slot, batch in enumerate(jobs):
            records[batch.index] = [
                {"class": c, "ipc": k,
                 "file": image_files.image_file(self.folders[c], k, self.rc.ipc, self.rc.image_format),
                 "ce": float(scores["ce"][slot][i]), "bn_loss": float(scores["bn"][slot][i]),
                 "teacher_pred": int(scores["pred"][slot][i]),
                 **({"init_sources": self.start.sources[(c, k)]} if self.start is not None else {}),
                 **({"verifier_pred": int(v_pred[slot][i])} if v_pred is not None else {})}
                for i, (c, k) in enumerate(zip(batch.classes, batch.ipcs))]
        parallel.host_barrier("recover_round_written")
        return records

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()
        self.log.close()


METHODS = ("sre2l", "rded")


def run(config, workdir: str) -> dict:
    """Recover the configured images into `workdir/recover/images` and write the manifest."""
    rc = config.recover
    if rc.method not in METHODS:
        raise ValueError(f"unknown recover.method {rc.method!r}; known: {METHODS}")
    stage_dir = os.path.join(workdir, "recover")
    model = teachers.load(config, workdir).with_dtype(compute_dtype(rc))
    inputs = {"teachers": model.fingerprint()}
    stage_state.Claim(stage_dir, {**settings(config), "inputs": inputs}, "recovered images").take()
    progress = stage_state.Progress(os.path.join(stage_dir, "progress.json"))
    names = model.meta.get("class_names") or [str(i) for i in range(config.data.num_classes)]
    folders = image_files.class_folder_names(list(names))
    t_start = time.time()
    if rc.method == "rded":
        keys, written = rded.recover(config, stage_dir, model, progress, folders)
    else:
        keys, written = _optimize(config, stage_dir, model, progress, folders)
    print(f"recover: this process wrote {written} images", flush=True)
    # The manifest covers every finished unit, so runs over ipc/class ranges fill in one set.
    entries = [e for k in keys if k in progress.done for e in progress.done[k]]
    summary = {**_summary(entries, model.paths[0], time.time() - t_start),
               "image_dir": os.path.join(stage_dir, "images")}
    summary["low_teacher_accuracy"] = summary["teacher_accuracy"] < LOW_TEACHER_ACCURACY
    if jax.process_index() == 0:
        image_files.write_manifest(stage_dir, {"config": config.to_dict(), "summary": summary,
                                               "class_folders": folders, "images": entries})
        _sanity_check(summary, rc)
        images, labels, _ = image_files.read_set(os.path.join(stage_dir, "images"), folders,
                                                 config.data.channels)
        log = MetricsLog(stage_dir, stage="recover")
        log.image("images", image_files.grid(images, labels))
        log.close()
    logging.info("recover: %s", summary)
    return summary


LOW_TEACHER_ACCURACY = 50.0


def _sanity_check(summary: dict, rc) -> None:
    """Warn when the teacher does not recognise most of its own recovered images."""
    if summary["teacher_accuracy"] >= LOW_TEACHER_ACCURACY:
        return
    print(f"WARNING recover: the teacher classifies only {summary['teacher_accuracy']:.1f}% of its "
          f"recovered images as their class (< {LOW_TEACHER_ACCURACY:.0f}%): the recipe does not fit "
          "this data. What usually fixes it: a smaller recover.alpha_bn (0.01), recover.crop=False or "
          "recover.crop_scale=(0.5, 1.0) at ≤ 64² pixels, more recover.iterations, recover.lr 0.25.",
          file=sys.stderr, flush=True)


def _optimize(config, stage_dir: str, model: teachers.Teachers, progress, folders) -> tuple[list, int]:
    """SRe²L: optimize every configured batch not finished yet; (every batch's key, images this
    process wrote)."""
    everything, batches = plan.configured_batches(config)
    todo = [b for b in batches if str(b.index) not in progress.done]
    recovery = _Recovery(config, stage_dir, model, todo, sum(len(b.classes) for b in batches), folders)
    for r, jobs in enumerate(recovery.rounds):
        records = recovery.run_round(r, jobs, len(progress.done))
        for b in jobs:
            progress.finish(str(b.index), records[b.index])
    recovery.close()
    return [str(b.index) for b in everything], recovery.written


def _summary(entries: list[dict], teacher_path: str, seconds: float) -> dict:
    accuracy = lambda key: 100.0 * float(np.mean([e[key] == e["class"] for e in entries]))
    summary = {"images": len(entries), "teacher_accuracy": accuracy("teacher_pred"),
               "mean_final_ce": float(np.mean([e["ce"] for e in entries])),
               "seconds_this_run": seconds, "teacher": teacher_path}
    if entries and "verifier_pred" in entries[0]:
        summary["verifier_accuracy"] = accuracy("verifier_pred")
    return summary
