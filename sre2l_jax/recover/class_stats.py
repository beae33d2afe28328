"""Class-conditional BatchNorm statistics of the real data (EDC's category-aware matching).

For a frozen teacher, one pass over the train split (the eval transform, BN in eval mode) gives,
for every BatchNorm layer l and class c, the mean μ_{l,c} and the biased variance σ²_{l,c} of the
layer's input over all (images of class c, H, W). EDC's code instead averages each image's own
spatial variance per class, which leaves out how the images' means spread; the pooled variance
here is what a batch of class-c images has over (batch, H, W), the quantity the BN loss measures.

The pass is data-parallel over the mesh; per-batch sums come back to the host and add up in
float64. `<workdir>/class_stats/<teacher index>/` holds the result (`stats.npz`) and, while the
pass runs, its partial sums (`partial.npz`, every `save_every` batches), claimed with the data
settings and the teacher's content hash: a killed pass resumes, other settings never mix in.
"""

from __future__ import annotations

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import parallel, stage_state
from sre2l_jax.data import pipeline, splits
from sre2l_jax.models import BN_IMAGE_SUMS, bn_statistics

STATS = "stats.npz"
PARTIAL = "partial.npz"


def _batch_sums(model, variables, images, labels, mask, num_classes: int):
    """Per layer and class: Σ of x and of x² over the batch's images of the class and their
    pixels, and the number of those pixels ([classes, C], [classes, C], [classes])."""
    _, state = model.apply(variables, images, train=False, mutable=[BN_IMAGE_SUMS])
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    return [(onehot.T @ s["sum"], onehot.T @ s["sumsq"], onehot.T @ s["pixels"])
            for _, s in bn_statistics(state[BN_IMAGE_SUMS])]


def compute(config, workdir: str, index: int, model, variables, save_every: int = 50) -> list[dict]:
    """[{'mean', 'var'} of shape [classes, C]] per BN layer in forward order, cached on disk."""
    out_dir = os.path.join(workdir, "class_stats", str(index))
    stage_state.Claim(out_dir, stage_state.settings(config, "data", teacher=stage_state.content_hash(
        variables)), "class-conditional statistics").take()
    done = stage_state.read_npz(os.path.join(out_dir, STATS))
    if done is None:
        done = _accumulate(config, out_dir, model, variables, save_every)
    layers = int(done["layers"])
    return [{"mean": done[f"mean_{i}"], "var": done[f"var_{i}"]} for i in range(layers)]


def _accumulate(config, out_dir: str, model, variables, save_every: int) -> dict:
    d = config.data
    mesh = parallel.make_mesh(config.num_devices)
    source = splits.build_source(d, "train")
    k = d.num_classes
    partial = stage_state.read_npz(os.path.join(out_dir, PARTIAL)) or {"batches": 0}
    sums_fn = jax.jit(functools.partial(_batch_sums, model, num_classes=k),
                      out_shardings=parallel.replicated(mesh))
    variables = parallel.replicate(mesh, variables)
    batch_size = max(mesh.devices.size, 256 // mesh.devices.size * mesh.devices.size)
    batches = pipeline.eval_batches(d, source, batch_size)
    for b, batch in enumerate(itertools.islice(batches, int(partial["batches"]), None),
                              start=int(partial["batches"])):
        g = parallel.global_batch(mesh, {"image": batch["image"], "label": batch["label"],
                                         "mask": batch["mask"]})
        sums = jax.device_get(sums_fn(variables, g["image"], g["label"], g["mask"]))
        for i, layer in enumerate(sums):
            for name, value in zip(("s1", "s2", "n"), layer):
                key = f"{name}_{i}"
                partial[key] = partial.get(key, 0.0) + np.asarray(value, np.float64)
        partial["layers"], partial["batches"] = len(sums), b + 1
        if (b + 1) % save_every == 0 and jax.process_index() == 0:
            stage_state.write_npz_atomic(os.path.join(out_dir, PARTIAL), partial)
    missing = np.flatnonzero(partial["n_0"] == 0)
    if len(missing):
        raise ValueError(f"class-conditional statistics: the train split has no image of classes "
                         f"{missing[:5].tolist()}")
    result = {"layers": int(partial["layers"])}
    for i in range(result["layers"]):
        n = partial[f"n_{i}"][:, None]
        mean = partial[f"s1_{i}"] / n
        result[f"mean_{i}"] = mean.astype(np.float32)
        result[f"var_{i}"] = np.maximum(partial[f"s2_{i}"] / n - mean**2, 0.0).astype(np.float32)
    if jax.process_index() == 0:
        stage_state.write_npz_atomic(os.path.join(out_dir, STATS), result)
    return result
