"""Training validate's students: each run from its seed, on lanes of devices, resumable.

A run is one (entry, seed): its images (the synthetic set or a real subset), hard or soft labels,
and the student recipe (`student.*`). Each run lives in `W/validate/runs/<entry>_seed<s>/`, claimed
with its settings: Orbax checkpoints every `validate.checkpoint_every_epochs` (a killed run resumes
to the same result), then `model/` and `result.json`; finished runs are skipped on restart. The
images are tiny, so they stay in device memory as uint8 and every epoch is a permutation of them.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import checkpoint, evaluate, optim, parallel, stage_state, teachers
from sre2l_jax.data import splits
from sre2l_jax.formats.labels import StoredLabels
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.models import create_model
from sre2l_jax.student import data as student_data
from sre2l_jax.student import plans
from sre2l_jax.student.steps import Recipe, Steps
from sre2l_jax.train_state import TrainState

# Student keys only the hard-label students read: a soft-label run's claim leaves them out.
HARD_LABEL_KEYS = ("hard_label_smoothing", "hard_label_crop_scale")


@dataclasses.dataclass
class Run:
    """One student: which entry and seed, its images, soft (teacher) or hard labels."""
    entry: str
    seed: int
    source: object  # random-access images and labels (the synthetic set or a real subset)
    images_hash: str  # student_data.fingerprint(source), read once per set, not once per run
    soft: bool
    stored: StoredLabels | None = None


def run_name(entry: str, seed: int, stored: bool = False) -> str:
    """A run's folder under `W/validate/runs/`; stored-label runs are kept apart from online ones."""
    return f"{entry}{'_stored' if stored else ''}_seed{seed}"


def result_path(claim: stage_state.Claim) -> str:
    """Present once the claimed run finished (written atomically, last)."""
    return os.path.join(claim.directory, "result.json")


@dataclasses.dataclass
class _Lane:
    """Devices that train one student at a time: their compiled steps and the teacher placed there."""
    mesh: jax.sharding.Mesh
    steps: Steps
    hard_steps: Steps  # the hard-label students' (`steps` itself unless their augmentation differs)
    teacher_vars: object

    def steps_for(self, soft: bool) -> Steps:
        return self.steps if soft else self.hard_steps


class Students:
    """One validate call's shared pieces: the recipe's compiled steps, teacher, eval split, log.

    Students train on lanes (`parallel.lane_meshes`): a batch the devices cannot split (25 images
    on 2 CPU devices) trains on one device, and the other devices train the next runs at the
    same time, each run's result identical to training it alone.
    """

    def __init__(self, config, workdir: str, model: teachers.Teachers, num_images: int,
                 top_k_targets: bool = False):
        st, d = config.student, config.data
        self.config, self.st, self.teachers_hash = config, st, model.fingerprint()
        self.stage_dir = os.path.join(workdir, "validate")
        self.eval_mesh = parallel.make_mesh(config.num_devices)  # evaluation splits any batch
        self.spec = plans.AugSpec.from_config(config)
        self.bounds = plans.batch_bounds(num_images, st.batch_size)
        self.num_images = num_images
        self.model = create_model(st.arch, d.num_classes, st.width, model.meta["stem"])
        self.schedule = optim.make_schedule(st.schedule, st.lr, st.epochs, len(self.bounds),
                                            warmup_epochs=st.warmup_epochs, zeta=st.zeta,
                                            milestones=tuple(st.milestones), gamma=st.gamma)
        self.tx = optim.make_optimizer(st.optimizer, self.schedule, momentum=st.momentum,
                                       weight_decay=st.weight_decay)
        recipe = Recipe(self.model, model.ensemble, self.tx, self.spec, float(st.temperature),
                        bool(st.tau2_factor), str(st.teacher_logits_dtype), st.loss,
                        float(st.ce_weight), float(st.ema), top_k_targets,
                        float(st.hard_label_smoothing))
        # Initialised on one device, then replicated from the host: one executable for any mesh
        # (and any number of hosts, which all compute the same values from the seed).
        self.init = jax.jit(self._init_state, compiler_options=parallel.one_shot_compiler_options())
        self.init_on_host = lambda key: jax.device_get(self.init(key))
        self.state_shape = jax.eval_shape(self._init_state, plans.init_key(0))
        hard_spec = plans.hard_label_spec(self.spec, tuple(st.hard_label_crop_scale))
        hard_recipe = dataclasses.replace(recipe, spec=hard_spec)
        self.lanes = []
        for mesh in parallel.lane_meshes(config.num_devices, batch=st.batch_size):
            state_sharding = parallel.replicated_like(self.state_shape, mesh)
            steps = Steps(recipe, mesh, state_sharding)
            hard_steps = steps if hard_spec == self.spec else Steps(hard_recipe, mesh, state_sharding)
            self.lanes.append(_Lane(mesh, steps, hard_steps, parallel.replicate(mesh, model.variables)))
        self.eval_source = splits.build_source(d, d.eval_split)
        self.holdout_source = splits.build_source(d, splits.HOLDOUT) if d.holdout else None
        self.meta = {"arch": st.arch, "width": st.width, "stem": model.meta["stem"],
                     "num_classes": d.num_classes, "channels": d.channels, "image_size": d.image_size,
                     "mean": list(d.mean), "std": list(d.std),
                     "class_names": list(model.meta.get("class_names") or []), "data": d.name}
        self.log: MetricsLog | None = None
        self.progress = 0  # steps of the stage done (or found done), over every run and lane

    def _init_state(self, key) -> TrainState:
        d = self.config.data
        variables = self.model.init(key, jnp.zeros((1, d.image_size, d.image_size, d.channels),
                                                   jnp.float32), train=False)
        params = variables["params"]
        ema = params if self.st.ema else None
        return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"],
                          self.tx.init(params), ema)

    def evaluate(self, model, variables, source=None) -> dict:
        return evaluate.evaluate(model, variables, self.config.data, source or self.eval_source,
                                 self.eval_mesh)

    def claim(self, run: Run) -> stage_state.Claim:
        """A run's directory and settings: the student recipe, which run it is, its inputs' contents."""
        run_dir = os.path.join(self.stage_dir, "runs", run_name(run.entry, run.seed, bool(run.stored)))
        identity = {"entry": run.entry, "seed": run.seed, "soft": run.soft,
                    "labels": run.stored.identity if run.stored else None}
        inputs = {"images": run.images_hash,
                  "teachers": self.teachers_hash}
        recorded = stage_state.settings(self.config, "data", "student")
        if run.soft:  # a soft-label run does not depend on them: changing them keeps its result
            for key in HARD_LABEL_KEYS:
                del recorded["student"][key]
        return stage_state.Claim(run_dir, {**recorded, "run": identity, "inputs": inputs},
                                 "a student run")

    def train_logged(self, runs: list[Run]) -> dict[str, list[dict]]:
        """`train_all` with the stage's metrics log open; results grouped by entry, seeds in order."""
        self.log = MetricsLog(self.stage_dir, stage="validate",
                              total_steps=len(runs) * self.st.epochs * len(self.bounds))
        results: dict[str, list[dict]] = {}
        for one, result in zip(runs, self.train_all(runs), strict=True):
            results.setdefault(one.entry, []).append(result)
        self.log.close()
        return results

    def train_all(self, runs: list[Run]) -> list[dict]:
        """Every run's result, in order; as many runs train at once as there are lanes, one step
        of each in turn (JAX dispatches asynchronously, so the lanes' devices work in parallel)."""
        results: list = [None] * len(runs)
        self._compile_lanes(runs)
        queue, active = list(enumerate(runs)), {}
        while queue or active:
            for lane in range(len(self.lanes)):
                if lane not in active and queue:
                    i, run = queue.pop(0)
                    active[lane] = (i, self._train(run, self.lanes[lane]))
            for lane, (i, job) in list(active.items()):
                try:
                    next(job)
                except StopIteration as finished:
                    results[i] = finished.value
                    del active[lane]
        return results

    def _compile_lanes(self, runs: list[Run]) -> None:
        """The initializer and the online step of each lane that will train, compiled side by side."""
        todo = [r for r in runs if not os.path.exists(result_path(self.claim(r)))]
        if not todo:
            return
        image_shape = plans.first_batch_shape(self.config.data, self.bounds)
        online_kinds = sorted({r.soft for r in todo if r.stored is None})
        online = [functools.partial(steps.compile_online, self.state_shape, lane.teacher_vars, image_shape)
                  for lane in self.lanes[:len(todo)]
                  for steps in dict.fromkeys(lane.steps_for(soft) for soft in online_kinds)]
        parallel.compile_at_once([lambda: self.init.lower(plans.init_key(0)).compile(), *online])

    def _train(self, run: Run, lane: _Lane):
        """Train (or resume, or skip if finished) one student, yielding after every step;
        returns its result."""
        claim = self.claim(run)
        run_dir, result_file = claim.directory, result_path(claim)
        claim.take()
        if os.path.exists(result_file):
            self.progress += self.st.epochs * len(self.bounds)
            return stage_state.read_json(result_file)
        if len(run.source) != self.num_images:
            raise ValueError(f"{run.entry}: {len(run.source)} images, the recipe was built for "
                             f"{self.num_images}")
        state = parallel.replicate(lane.mesh, self.init_on_host(plans.init_key(run.seed)))
        mngr = checkpoint.manager(os.path.join(run_dir, "checkpoints"), max_to_keep=1)
        start, history = 0, []
        restored = checkpoint.restore_state(mngr, state)
        if restored is not None:
            _, state, extra = restored
            start, history = extra["epoch"], extra["history"]
            print(f"validate: resumed {run.entry} seed {run.seed} at epoch {start}", flush=True)
        self.progress += start * len(self.bounds)
        state = yield from self._epochs(run, lane, state, start, history, mngr)
        mngr.wait_until_finished()
        mngr.close()
        final = history[-1]
        checkpoint.save_model(os.path.join(run_dir, "model"), parallel.to_host(state.eval_variables),
                              {**self.meta, "top1": final["top1"], "source": f"validate:{run.entry}"})
        result = {"entry": run.entry, "seed": run.seed, "top1": float(final["top1"]),
                  "top5": float(final["top5"]), "per_class_top1": final["per_class_top1"],
                  "history": history}
        if self.holdout_source is not None:
            result["holdout_top1"] = float(self.evaluate(self.model, state.eval_variables,
                                                         self.holdout_source)["top1"])
        if jax.process_index() == 0:
            stage_state.write_json_atomic(result_file, result)
        return result

    def _epochs(self, run: Run, lane: _Lane, state: TrainState, start: int, history: list, mngr):
        """Epochs start.. of one run, yielding after every step; appends evaluations to `history`,
        checkpoints on the way; returns the final state."""
        st, epochs, steps = self.st, self.st.epochs, lane.steps_for(run.soft)
        data = student_data.StudentData(run.source, self.config.data.image_size, lane.mesh,
                                        st.batch_size, st.data_workers, st.data_prefetch)
        eval_every = st.eval_every_epochs or epochs
        step, metrics = start * len(self.bounds), None
        for epoch in range(start, epochs):
            stored = run.stored.epoch(epoch) if run.stored else None
            order = (np.concatenate([idx for idx, _, _ in stored]) if stored else
                     plans.epoch_order(run.seed, epoch, len(run.source)))
            for b, images, labels in data.epoch(order):
                if stored is not None:
                    _, plan, targets = stored[b]
                    plan = {k: (parallel.replicate(lane.mesh, a) if k in plans.BATCH_KEYS else
                                steps.place(a)) for k, a in plan.items()}
                    state, metrics = steps.stored(state, images, labels, plan, steps.place(targets))
                else:
                    ids = parallel.replicate(lane.mesh, np.asarray([run.seed, epoch, b], np.int32))
                    state, metrics = steps.online(state, lane.teacher_vars, images, labels, ids,
                                                  run.soft)
                step += 1
                self.progress += 1
                if step % self.config.log_every_steps == 0:
                    self._log(run, metrics, step, epoch)
                yield
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                result = self.evaluate(self.model, state.eval_variables)
                history.append({"epoch": epoch + 1, "top1": float(result["top1"]),
                                "top5": float(result["top5"]),
                                "per_class_top1": result["per_class_top1"]})
                self._log(run, metrics, step, epoch, eval_top1=result["top1"],
                          eval_top5=result["top5"])
            every = self.config.validate.checkpoint_every_epochs
            if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
                checkpoint.save_state(mngr, epoch + 1, state, {"epoch": epoch + 1, "history": history},
                                      force=True)
                # Runs on other lanes save from this thread too; Orbax's background commits of
                # two managers at once raced on a temporary directory (benchmarks/RESULTS.md).
                mngr.wait_until_finished()
        return state

    def _log(self, run, metrics, step, epoch, **extra) -> None:
        values = {"loss": parallel.to_host(metrics)["loss"]} if metrics is not None else {}
        self.log.write(self.progress, run=f"{run.entry}/seed{run.seed}", **values, **extra,
                       lr=float(self.schedule(max(step - 1, 0))), epoch=epoch + 1)
