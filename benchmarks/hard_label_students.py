r"""Train only the hard-label students of `validate` (random+hard, recovered images+hard).

A hard-label student never sees the teacher's labels, so a change to how hard labels train
(`student.hard_label_smoothing`) needs no new SRe²L or random+soft student. This trains the
hard-label entries of `validate.baselines` for every seed into `W/validate/runs/` (the same run
directories and claims as `validate`, so the full stage reuses them later) and prints their test
and holdout top-1. README "Label smoothing for the hard-label students":

  python benchmarks/hard_label_students.py \
    --config=configs/fashion_mnist.py:validate,holdout=5000,seeds=3 --workdir=W \
    --config.validate.baselines='("real_hard",)' --config.student.hard_label_smoothing=0.1

W holds `squeeze/` and `recover/` (the teacher, and the recovered images that fix the per-class counts).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sre2l_jax import parallel, validate

CONFIG = config_flags.DEFINE_config_file("config", None,
                                         "Config file, e.g. configs/fashion_mnist.py:validate")
WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with squeeze/ and recover/.")


def train_hard_label_students(config, workdir: str) -> dict[str, list[dict]]:
    """Every hard-label baseline run of `config` (entry → results in seed order)."""
    _, _, students, runs = validate.prepare(config, workdir, keep=lambda run: not run.soft)
    if not runs:
        raise ValueError("validate.baselines has no hard-label entry (real_hard, synthetic_hard)")
    return students.train_logged(runs)


def main(argv) -> None:
    del argv
    config = CONFIG.value
    parallel.use_cpu_devices(config.cpu_devices)
    for entry, results in train_hard_label_students(config, os.path.abspath(WORKDIR.value)).items():
        for key in ("top1", "holdout_top1"):
            values = [r[key] for r in results if key in r]
            if values:
                std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else " (1 seed)"
                print(f"{entry} {key}: {np.mean(values):.2f}{std}  per seed {values}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
