"""Top-1/top-5 of a model on a real evaluation split, data-parallel over the mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import parallel
from sre2l_jax.data import pipeline


@functools.partial(jax.jit, static_argnums=(0,))
def _count_correct(model, variables, images, labels, mask):
    """[3, classes]: top-1 hits, top-5 hits and examples, per true class."""
    logits = model.apply(variables, images, train=False)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit1 = (top5[:, 0] == labels) & mask
    hit5 = jnp.any(top5 == labels[:, None], axis=-1) & mask
    per_class = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.int32)
    return jnp.stack([hit1, hit5, mask]).astype(jnp.int32) @ per_class


def _model_variables(variables: dict | tuple) -> dict | tuple:
    """{params, batch_stats} of a model (dropping other collections), or of each Ensemble member."""
    if isinstance(variables, tuple):
        return tuple(_model_variables(v) for v in variables)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def evaluate(model, variables: dict | tuple, data_cfg, source, mesh, batch_size: int = 500) -> dict:
    """{'top1', 'top5', 'per_class_top1'} in percent over the whole split (padding rows masked out).

    `model` may be an Ensemble with a tuple of variables (multi-teacher soft labels)."""
    n_dev = mesh.devices.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    variables = parallel.replicate(mesh, _model_variables(variables))
    counts = np.zeros((3, data_cfg.num_classes), np.int64)
    for batch in pipeline.eval_batches(data_cfg, source, batch_size):
        g = parallel.global_batch(mesh, {"image": batch["image"], "label": batch["label"],
                                         "mask": batch["mask"]})
        counts += np.asarray(_count_correct(model, variables, g["image"], g["label"], g["mask"]))
    totals = counts.sum(1)
    if totals[2] == 0:
        raise ValueError("evaluation split is empty")
    per_class = [100.0 * int(h) / int(n) if n else None for h, n in zip(counts[0], counts[2])]
    return {"top1": 100.0 * totals[0] / totals[2], "top5": 100.0 * totals[1] / totals[2],
            "num_examples": int(totals[2]), "per_class_top1": per_class}
