"""Stage 1, squeeze: train the teacher whose BatchNorm statistics recovery will match.

Or import it: with `squeeze.torchvision_weights` set, the stage converts a torchvision `.pth` instead
of training (ImageNet-1K uses torchvision's IMAGENET1K_V1 weights, SPEC §1).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging

from sre2l_jax import checkpoint, evaluate, optim, parallel
from sre2l_jax.data import pipeline, sources
from sre2l_jax.metrics import MetricsLog
from sre2l_jax.models import create_model, init_variables


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


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

    source = sources.build_source(config.data, config.data.train_split)
    out = os.path.join(workdir, "squeeze", "model")
    meta = torch_import.import_torchvision(
        config.squeeze.torchvision_weights, out, expected_num_classes=config.data.num_classes,
        expected_stem=config.model.stem, expected_arch=config.model.arch,
        image_size=config.data.image_size, mean=tuple(config.data.mean), std=tuple(config.data.std),
        class_names=list(source.class_names))
    return meta


def train_and_evaluate(config, workdir: str, num_devices: int = 0) -> dict:
    """Train (or import) the squeeze model; writes `workdir/squeeze/{model,summary.json}`."""
    stage_dir = os.path.join(workdir, "squeeze")
    os.makedirs(stage_dir, exist_ok=True)
    if config.squeeze.torchvision_weights:
        meta = _import_weights(config, workdir)
        summary = {"top1": meta.get("top1"), "imported": config.squeeze.torchvision_weights}
        checkpoint.write_json_atomic(os.path.join(stage_dir, "summary.json"), summary)
        return summary

    sc, dc = config.squeeze, config.data
    mesh = parallel.make_mesh(num_devices)
    train_src = sources.build_source(dc, dc.train_split)
    eval_src = sources.build_source(dc, dc.eval_split)
    steps_per_epoch = pipeline.steps_per_epoch(len(train_src), sc.batch_size)
    total_steps = sc.max_steps or sc.epochs * steps_per_epoch
    model = create_model(config.model.arch, dc.num_classes, config.model.width, config.model.stem,
                         jnp.dtype(config.model.dtype))
    schedule = optim.cosine_with_warmup(sc.lr, sc.epochs, steps_per_epoch, sc.warmup_epochs,
                                        per_epoch=sc.schedule == "cosine_epoch")
    tx = optim.make_optimizer(sc.optimizer, schedule, momentum=sc.momentum,
                              weight_decay=sc.weight_decay)

    def init_state():
        variables = init_variables(model, jax.random.key(config.seed),
                                   (dc.image_size, dc.image_size, dc.channels))
        return TrainState(jnp.zeros((), jnp.int32), variables["params"],
                          variables["batch_stats"], tx.init(variables["params"]))

    repl = parallel.replicated(mesh)
    state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init_state))
    state = jax.jit(init_state, out_shardings=state_sharding)()
    data_iter = pipeline.train_iterator(dc, train_src, sc.batch_size, config.seed)

    mngr = checkpoint.manager(os.path.join(stage_dir, "checkpoints"))
    restored = checkpoint.restore_state(mngr, state)
    if restored is not None:
        start, state, extra = restored
        data_iter.set_state(extra["data_iterator"])
        logging.info("squeeze: resumed from step %d", start)
        print(f"squeeze: resumed from step {start}", flush=True)

    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                        label_smoothing=sc.label_smoothing),
                      in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                      out_shardings=(state_sharding, repl), donate_argnums=(0,))
    log = MetricsLog(stage_dir, total_steps=total_steps, stage="squeeze")
    log.rewind(int(state.step))
    eval_every = max(1, sc.eval_every_epochs) * steps_per_epoch
    step = int(state.step)
    history = []
    t_start = time.time()
    while step < total_steps:
        batch = parallel.global_batch(mesh, next(data_iter))
        state, metrics = step_fn(state, batch)
        step += 1
        if step % config.log_every_steps == 0 or step == total_steps:
            log.write(step, **parallel.to_host(metrics), lr=float(schedule(step - 1)),
                      epoch=step / steps_per_epoch)
        if step % eval_every == 0 or step == total_steps:
            result = evaluate.evaluate(model, _variables(state), dc, eval_src, mesh)
            history.append({"step": step, **result})
            log.write(step, eval_top1=result["top1"], eval_top5=result["top5"])
        if step % sc.checkpoint_every_steps == 0 or step == total_steps:
            checkpoint.save_state(mngr, step, state, {"data_iterator": data_iter.get_state()},
                                  force=True)
    mngr.wait_until_finished()

    final = history[-1] if history else evaluate.evaluate(model, _variables(state), dc, eval_src, mesh)
    checkpoint.save_model(os.path.join(stage_dir, "model"), parallel.to_host(_variables(state)),
                          model_meta(config, train_src, final["top1"], "squeeze"))
    summary = {"top1": final["top1"], "top5": final["top5"], "steps": total_steps,
               "epochs": total_steps / steps_per_epoch, "seconds_this_run": time.time() - t_start,
               "history": history}
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(os.path.join(stage_dir, "summary.json"), summary)
    return summary


def _variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}
