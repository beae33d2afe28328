"""Stage 1, squeeze: train the teacher whose BatchNorm statistics recovery will match.

Or import it: with `squeeze.torchvision_weights` set, the stage converts a torchvision `.pth` instead
of training (ImageNet-1K uses torchvision's IMAGENET1K_V1 weights, SPEC §1).
"""

from __future__ import annotations

import copy
import functools
import os
import time

import jax
import jax.numpy as jnp
import optax
from absl import logging

from sre2l_jax import checkpoint, evaluate, optim, parallel, stage_state
from sre2l_jax.data import pipeline, splits
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.models import create_model, initial_variables
from sre2l_jax.train_state import TrainState


def settings(config) -> dict:
    return stage_state.settings(config, "data", "model", "squeeze")


def model_meta(config, source, top1: float | None, origin: str) -> dict:
    """What later stages need to know about a model checkpoint, beyond its arrays."""
    m, d = config.model, config.data
    return {"arch": m.arch, "width": m.width, "stem": m.stem, "num_classes": d.num_classes,
            "channels": d.channels, "image_size": d.image_size, "mean": list(d.mean),
            "std": list(d.std), "class_names": list(source.class_names), "top1": top1,
            "source": origin, "data": d.name}


def train_step(state: TrainState, batch: dict, *, model, tx, label_smoothing: float):
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      batch["image"], train=True, mutable=["batch_stats"])
        labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], logits.shape[-1]),
                                     label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
    return new_state, {"loss": loss, "train_acc": accuracy}


def _import_weights(config, workdir: str) -> dict:
    from sre2l_jax import torch_import  # torch is an optional extra

    source = splits.build_source(config.data, config.data.train_split)
    out = os.path.join(workdir, "squeeze", "model")
    meta = torch_import.import_torchvision(
        config.squeeze.torchvision_weights, out, expected_num_classes=config.data.num_classes,
        expected_stem=config.model.stem, expected_arch=config.model.arch,
        image_size=config.data.image_size, mean=tuple(config.data.mean), std=tuple(config.data.std),
        class_names=list(source.class_names))
    return meta


def run(config, workdir: str) -> dict:
    """Train (or import) the squeeze model; writes `workdir/squeeze/{model,summary.json}`."""
    stage_dir = os.path.join(workdir, "squeeze")
    stage_state.Claim(stage_dir, settings(config), "a squeeze run").take()
    if config.squeeze.torchvision_weights:
        meta = _import_weights(config, workdir)
        summary = {"top1": meta.get("top1"), "imported": config.squeeze.torchvision_weights}
    else:
        summary = _train(config, stage_dir)
    if config.squeeze.backbones:
        summary["backbones"] = [
            {"spec": spec, **_train(backbone_config(config, i), backbone_dir(stage_dir, i))}
            for i, spec in enumerate(config.squeeze.backbones)]
    if jax.process_index() == 0:
        stage_state.write_json_atomic(os.path.join(stage_dir, "summary.json"), summary)
    return summary


def backbone_dir(stage_dir: str, i: int) -> str:
    return os.path.join(stage_dir, "backbones", str(i))


def backbone_config(config, i: int):
    """The config that trains backbone i of `squeeze.backbones` ("arch:width:epochs"), seed + 1 + i."""
    spec = config.squeeze.backbones[i]
    try:
        arch, width, epochs = spec.split(":")
        width, epochs = int(width), int(epochs)
    except ValueError:
        raise ValueError(f"squeeze.backbones entry {spec!r} is not 'arch:width:epochs' "
                         "(e.g. 'resnet18:16:2')") from None
    c = copy.deepcopy(config)
    c.unlock()
    c.seed = config.seed + 1 + i
    c.model.arch, c.model.width, c.squeeze.epochs, c.squeeze.backbones = arch, width, epochs, ()
    return c


class _Trainer:
    """The squeeze run's model, optimizer, data and jitted step on the mesh."""

    def __init__(self, config):
        sc, dc = config.squeeze, config.data
        self.config, self.sc, self.dc = config, sc, dc
        self.mesh = parallel.make_mesh(config.num_devices)
        self.train_src = splits.build_source(dc, dc.train_split)
        self.eval_src = splits.build_source(dc, dc.eval_split)
        self.holdout_src = splits.build_source(dc, splits.HOLDOUT) if dc.holdout else None
        self.steps_per_epoch = pipeline.steps_per_epoch(len(self.train_src), sc.batch_size)
        self.total_steps = sc.max_steps or sc.epochs * self.steps_per_epoch
        self.model = create_model(config.model.arch, dc.num_classes, config.model.width,
                                  config.model.stem, jnp.dtype(config.model.dtype))
        self.schedule = optim.cosine_with_warmup(sc.lr, sc.epochs, self.steps_per_epoch,
                                                 sc.warmup_epochs, per_epoch=sc.schedule == "cosine_epoch")
        self.tx = optim.make_optimizer(sc.optimizer, self.schedule, momentum=sc.momentum,
                                       weight_decay=sc.weight_decay)
        repl = parallel.replicated(self.mesh)
        self.state_sharding = parallel.replicated_like(jax.eval_shape(self.init_state), self.mesh)
        self.step_fn = jax.jit(functools.partial(train_step, model=self.model, tx=self.tx,
                                                 label_smoothing=sc.label_smoothing),
                               in_shardings=(self.state_sharding, parallel.batch_sharding(self.mesh)),
                               out_shardings=(self.state_sharding, repl), donate_argnums=(0,),
                               compiler_options=parallel.training_compiler_options())

    def init_state(self) -> TrainState:
        variables = initial_variables(self.model, jax.random.key(self.config.seed),
                                      (self.dc.image_size, self.dc.image_size, self.dc.channels))
        return TrainState(jnp.zeros((), jnp.int32), variables["params"],
                          variables["batch_stats"], self.tx.init(variables["params"]))

    def evaluate(self, state: TrainState, source=None) -> dict:
        return evaluate.evaluate(self.model, state.variables, self.dc, source or self.eval_src,
                                 self.mesh)


def _train(config, stage_dir: str) -> dict:
    sc = config.squeeze
    tr = _Trainer(config)
    state = jax.jit(tr.init_state, out_shardings=tr.state_sharding,
                    compiler_options=parallel.one_shot_compiler_options())()
    data_iter = pipeline.train_iterator(tr.dc, tr.train_src, sc.batch_size, config.seed)
    mngr = checkpoint.manager(os.path.join(stage_dir, "checkpoints"))
    restored = checkpoint.restore_state(mngr, state)
    if restored is not None:
        start, state, extra = restored
        data_iter.set_state(extra["data_iterator"])
        logging.info("squeeze: resumed from step %d", start)
        print(f"squeeze: resumed from step {start}", flush=True)
    log = MetricsLog(stage_dir, total_steps=tr.total_steps, stage="squeeze")
    log.rewind(int(state.step))
    eval_every = max(1, sc.eval_every_epochs) * tr.steps_per_epoch
    step, history, t_start = int(state.step), [], time.time()
    while step < tr.total_steps:
        state, metrics = tr.step_fn(state, parallel.global_batch(tr.mesh, next(data_iter)))
        step += 1
        if step % config.log_every_steps == 0 or step == tr.total_steps:
            log.write(step, **parallel.to_host(metrics), lr=float(tr.schedule(step - 1)),
                      epoch=step / tr.steps_per_epoch)
        if step % eval_every == 0 or step == tr.total_steps:
            result = tr.evaluate(state)
            history.append({"step": step, **result})
            log.write(step, eval_top1=result["top1"], eval_top5=result["top5"])
        if step % sc.checkpoint_every_steps == 0 or step == tr.total_steps:
            checkpoint.save_state(mngr, step, state, {"data_iterator": data_iter.get_state()},
                                  force=True)
    mngr.wait_until_finished()
    log.close()
    final = history[-1] if history else tr.evaluate(state)
    checkpoint.save_model(os.path.join(stage_dir, "model"), parallel.to_host(state.variables),
                          model_meta(config, tr.train_src, final["top1"], "squeeze"))
    summary = {"top1": final["top1"], "top5": final["top5"], "steps": tr.total_steps,
               "epochs": tr.total_steps / tr.steps_per_epoch, "seconds_this_run": time.time() - t_start,
               "history": history}
    if tr.holdout_src is not None:
        summary["holdout_top1"] = tr.evaluate(state, tr.holdout_src)["top1"]
    return summary
