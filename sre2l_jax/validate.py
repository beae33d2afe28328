"""Stage 4, validate: train students from scratch on the synthetic set with the teacher's soft labels.

Entries: `sre2l` (the synthetic images, soft labels — online from the frozen teacher inside the
step, or replayed from `relabel`'s stored labels) and the baselines of `validate.baselines` with the
identical recipe: `real_soft` (a random real subset of the train split with the same images per
class, drawn from the seed, soft labels), `real_hard` (that subset, cross-entropy with labels mixed
by λ) and `synthetic_hard` (the synthetic images, hard labels). Every entry runs for every seed of
`validate.seeds`; `W/validate/summary.json` reports mean ± std (sample std, 0 for one seed).

Each run lives in `W/validate/runs/<entry>_seed<s>/`: Orbax checkpoints every
`validate.checkpoint_every_epochs` (a killed run resumes to the same result), then `model/` and
`result.json`; finished runs are skipped on restart. The synthetic set and the real subset are
tiny, so they stay in device memory as uint8 and every epoch is a permutation of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sre2l_jax import checkpoint, evaluate, optim, parallel, relabel, student
from sre2l_jax.data import sources
from sre2l_jax.data.transforms import EvalResize
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.models import create_model
from sre2l_jax.squeeze import TrainState

SRE2L = "sre2l"
BASELINES = ("real_soft", "real_hard", "synthetic_hard")
LABEL_MODES = ("online", "stored")
_SUBSET_TAG = 0x5EA1  # keeps the real-subset draw apart from other uses of the seed


@dataclasses.dataclass
class Run:
    entry: str
    seed: int
    images: np.ndarray  # uint8 [N,H,W,C]
    labels: np.ndarray  # int32 [N]
    soft: bool
    stored: relabel.StoredLabels | None = None


def real_subset(train_source, counts: np.ndarray, seed: int, image_size: int):
    """`counts[c]` random train images of each class c, drawn from the seed, at image_size²."""
    all_labels = sources.source_labels(train_source)
    rng = np.random.default_rng([seed, _SUBSET_TAG])
    chosen = []
    for c, k in enumerate(counts):
        pool = np.flatnonzero(all_labels == c)
        if len(pool) < k:
            raise ValueError(f"class {c} has {len(pool)} training images, fewer than the {k} the "
                             "real-subset baseline needs")
        chosen.extend(rng.choice(pool, int(k), replace=False).tolist())
    # Shorter side to image_size then a centre crop: square like the synthetic images, no squash.
    fit = EvalResize(image_size, image_size)
    images = np.stack([fit.map(train_source[i])["image"] for i in chosen]).astype(np.uint8)
    return images, all_labels[chosen].astype(np.int32)


def run_name(entry: str, seed: int, stored: bool = False) -> str:
    """A run's folder under `W/validate/runs/`; stored-label runs are kept apart from online ones."""
    return f"{entry}{'_stored' if stored else ''}_seed{seed}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


class _Trainer:
    """One validate call's shared pieces: the recipe's compiled steps, teacher, eval split, log."""

    def __init__(self, config, workdir: str, num_devices: int, teacher, teacher_vars, teacher_meta,
                 num_images: int, fixed: dict):
        v, d = config.validate, config.data
        self.config, self.v, self.fixed = config, v, fixed
        self.stage_dir = os.path.join(workdir, "validate")
        self.mesh = parallel.make_mesh(num_devices)
        self.bounds = student.batch_bounds(num_images, v.batch_size)
        self.num_images = num_images
        self.model = create_model(v.student_arch, d.num_classes, v.student_width, teacher_meta["stem"])
        self.schedule = optim.cosine_with_warmup(v.lr, v.epochs, len(self.bounds), v.warmup_epochs,
                                                 per_epoch=v.schedule == "cosine_epoch")
        tx = optim.make_optimizer(v.optimizer, self.schedule, momentum=v.momentum,
                                  weight_decay=v.weight_decay)
        recipe = student.Recipe(self.model, teacher, tx, student.AugSpec.from_config(config),
                                float(config.relabel.temperature), bool(v.tau2_factor),
                                str(v.teacher_logits_dtype))
        shape = (1, d.image_size, d.image_size, d.channels)

        def init_state(key):
            variables = self.model.init(key, jnp.zeros(shape, jnp.float32), train=False)
            params = variables["params"]
            return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))

        repl = parallel.replicated(self.mesh)
        self.state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init_state, student.init_key(0)))
        # Initialised on one device, then replicated from the host: one executable for any mesh
        # (and any number of hosts, which all compute the same values from the seed).
        init = jax.jit(init_state)
        self.init = lambda key: parallel.replicate(self.mesh, jax.device_get(init(key)))
        self.steps = student.Steps(recipe, self.mesh, self.state_sharding)
        self.teacher_vars = parallel.replicate(self.mesh, teacher_vars)
        self.eval_source = sources.build_source(d, d.eval_split)
        self.meta = {"arch": v.student_arch, "width": v.student_width, "stem": teacher_meta["stem"],
                     "num_classes": d.num_classes, "channels": d.channels, "image_size": d.image_size,
                     "mean": list(d.mean), "std": list(d.std),
                     "class_names": list(teacher_meta.get("class_names") or []), "data": d.name}
        self.log: MetricsLog | None = None

    def evaluate(self, model, variables) -> dict:
        return evaluate.evaluate(model, variables, self.config.data, self.eval_source, self.mesh)

    def fingerprint(self, run: Run) -> str:
        # Only what changes this run's numbers: a new seed list or baseline set keeps finished runs.
        ignore = {"seeds", "baselines", "checkpoint_every_epochs", "labels"}
        if not run.soft or run.stored:
            ignore.add("teacher_logits_dtype")
        v = {k: val for k, val in self.v.to_dict().items() if k not in ignore}
        rl = {k: self.config.relabel[k] for k in ("temperature", "crop_scale", "mix", "mix_alpha",
                                                   "mix_prob")}
        text = json.dumps({"validate": v, "relabel": rl, "data": self.config.data.to_dict(),
                           "entry": run.entry, "seed": run.seed, "soft": run.soft,
                           "stored": run.stored.meta["settings"] if run.stored else None,
                           "images": student.fingerprint(run.images, run.labels), **self.fixed},
                          sort_keys=True, default=str)
        return student.fingerprint(np.frombuffer(text.encode(), np.uint8))

    def train(self, run: Run, step_offset: int) -> dict:
        """Train (or resume, or skip if finished) one student; returns its result."""
        v, epochs = self.v, self.v.epochs
        run_dir = os.path.join(self.stage_dir, "runs", run_name(run.entry, run.seed, bool(run.stored)))
        result_path = os.path.join(run_dir, "result.json")
        fp = self.fingerprint(run)
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
            if result["fingerprint"] == fp:
                return result
            raise ValueError(f"{run_dir} holds a run with other settings; delete it (or "
                             f"{self.stage_dir}) or use a new workdir")
        if len(run.images) != self.num_images:
            raise ValueError(f"{run.entry}: {len(run.images)} images, the recipe was built for "
                             f"{self.num_images}")
        state = self.init(student.init_key(run.seed))
        mngr = checkpoint.manager(os.path.join(run_dir, "checkpoints"), max_to_keep=1)
        start, history = 0, []
        restored = checkpoint.restore_state(mngr, state)
        if restored is not None:
            _, state, extra = restored
            if extra["fingerprint"] != fp:
                raise ValueError(f"{run_dir}/checkpoints belong to a run with other settings; "
                                 "delete them or use a new workdir")
            start, history = extra["epoch"], extra["history"]
            print(f"validate: resumed {run.entry} seed {run.seed} at epoch {start}", flush=True)
        images = parallel.replicate(self.mesh, run.images)
        labels = parallel.replicate(self.mesh, run.labels)
        eval_every = v.eval_every_epochs or epochs
        step = start * len(self.bounds)
        metrics = None
        for epoch in range(start, epochs):
            stored = run.stored.epoch(epoch) if run.stored else None
            order = None if stored else student.epoch_order(run.seed, epoch, len(run.images))
            for b, (s, e) in enumerate(self.bounds):
                if stored is not None:
                    idx, plan, targets = stored[b]
                    plan = {k: (parallel.replicate(self.mesh, a) if k in ("lam", "box") else
                                self.steps.place(a)) for k, a in plan.items()}
                    state, metrics = self.steps.stored(state, images, self.steps.place(idx), plan,
                                                       self.steps.place(targets))
                else:
                    ids = parallel.replicate(self.mesh, np.asarray([run.seed, epoch, b], np.int32))
                    state, metrics = self.steps.online(state, self.teacher_vars, images, labels,
                                                       self.steps.place(order[s:e]), ids, run.soft)
                step += 1
                if step % self.config.log_every_steps == 0:
                    self._log(step_offset + step, run, metrics, step, epoch)
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                result = self.evaluate(self.model, _variables(state))
                history.append({"epoch": epoch + 1, "top1": float(result["top1"]),
                                "top5": float(result["top5"])})
                self._log(step_offset + step, run, metrics, step, epoch, eval_top1=result["top1"],
                          eval_top5=result["top5"])
            if v.checkpoint_every_epochs and (epoch + 1) % v.checkpoint_every_epochs == 0 \
                    and epoch + 1 < epochs:
                checkpoint.save_state(mngr, epoch + 1, state,
                                      {"epoch": epoch + 1, "history": history, "fingerprint": fp},
                                      force=True)
        mngr.wait_until_finished()
        mngr.close()
        final = history[-1]
        checkpoint.save_model(os.path.join(run_dir, "model"), parallel.to_host(_variables(state)),
                              {**self.meta, "top1": final["top1"], "source": f"validate:{run.entry}"})
        result = {"entry": run.entry, "seed": run.seed, "top1": float(final["top1"]),
                  "top5": float(final["top5"]),
                  "history": history, "fingerprint": fp}
        if jax.process_index() == 0:
            checkpoint.write_json_atomic(result_path, result)
        return result

    def _log(self, global_step, run, metrics, step, epoch, **extra) -> None:
        values = {"loss": parallel.to_host(metrics)["loss"]} if metrics is not None else {}
        self.log.write(global_step, run=f"{run.entry}/seed{run.seed}", **values, **extra,
                       lr=float(self.schedule(max(step - 1, 0))), epoch=epoch + 1)


def _variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def validate(config, workdir: str, num_devices: int = 0) -> dict:
    """Train and evaluate every (entry, seed); writes `W/validate/summary.json` and returns it."""
    v = config.validate
    if v.labels not in LABEL_MODES:
        raise ValueError(f"validate.labels must be one of {LABEL_MODES}, got {v.labels!r}")
    unknown = [b for b in v.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown validate.baselines {unknown}; known: {BASELINES}")
    if not v.seeds:
        raise ValueError("validate.seeds is empty")
    teacher, teacher_vars, teacher_meta, teacher_path = student.load_teacher(config, workdir)
    images, labels = student.load_synthetic(config, workdir, teacher_meta)
    counts = np.bincount(labels, minlength=config.data.num_classes)
    stored = None
    if v.labels == "stored":
        expected = relabel.label_settings(config, images, labels, teacher_vars)
        expected["batch_size"] = v.batch_size
        stored = relabel.StoredLabels(os.path.join(workdir, "relabel"), expected, v.epochs)
    trainer = _Trainer(config, workdir, num_devices, teacher, teacher_vars, teacher_meta,
                       len(images), {"teacher": student.fingerprint(teacher_vars)})
    t0 = time.time()
    teacher_eval = trainer.evaluate(teacher, teacher_vars)

    train_source = None
    runs: list[Run] = []
    for seed in v.seeds:
        runs.append(Run(SRE2L, seed, images, labels, soft=True, stored=stored))
        for name in v.baselines:
            if name == "synthetic_hard":
                runs.append(Run(name, seed, images, labels, soft=False))
                continue
            if train_source is None:
                train_source = sources.build_source(config.data, config.data.train_split)
            real_images, real_labels = real_subset(train_source, counts, seed, config.data.image_size)
            runs.append(Run(name, seed, real_images, real_labels, soft=name == "real_soft"))
    steps_per_run = v.epochs * len(trainer.bounds)
    trainer.log = MetricsLog(trainer.stage_dir, total_steps=len(runs) * steps_per_run,
                             stage="validate")
    results: dict[str, list[dict]] = {}
    for i, run in enumerate(runs):
        results.setdefault(run.entry, []).append(trainer.train(run, i * steps_per_run))

    summary = _summary(config, results, counts, teacher_eval, teacher_path)
    summary["seconds_this_run"] = time.time() - t0
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(os.path.join(trainer.stage_dir, "summary.json"), summary)
    line = " | ".join(f"{name} {s['top1']:.2f} ± {s['top1_std']:.2f}" for name, s in
                      [(SRE2L, summary)] + [(b, summary[b]) for b in v.baselines])
    print(f"validate: top-1 (%) {line} | teacher {teacher_eval['top1']:.2f}", flush=True)
    logging.info("validate: %s", summary)
    return summary


def _entry_summary(results: list[dict]) -> dict:
    top1, top1_std = _mean_std([r["top1"] for r in results])
    top5, top5_std = _mean_std([r["top5"] for r in results])
    return {"top1": top1, "top1_std": top1_std, "top5": top5, "top5_std": top5_std,
            "per_seed": [{"seed": r["seed"], "top1": r["top1"], "top5": r["top5"]} for r in results]}


def _summary(config, results: dict, counts: np.ndarray, teacher_eval: dict, teacher_path: str) -> dict:
    v = config.validate
    ipc = int(counts[0]) if np.all(counts == counts[0]) else counts.tolist()
    summary = {**_entry_summary(results[SRE2L]), "ipc": ipc, "num_images": int(counts.sum()),
               "student": v.student_arch, "student_width": v.student_width, "labels": v.labels,
               "epochs": v.epochs, "seeds": list(v.seeds), "teacher": os.path.abspath(teacher_path),
               "teacher_top1": float(teacher_eval["top1"]),
               "teacher_top5": float(teacher_eval["top5"]),
               "baselines": list(v.baselines)}
    for name in v.baselines:
        summary[name] = _entry_summary(results[name])
    return summary
