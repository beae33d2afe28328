r"""Train only some of `validate`'s students: the entries named by --entries, for every seed.

A hard-label student never sees the teacher's labels, so a change to how hard labels train
(`student.hard_label_smoothing`, `student.hard_label_crop_scale`) needs no new SRe²L or random+soft
student; a longer random+soft student is a reference for what a shorter default costs. This trains
the named entries (default: the hard-label entries of `validate.baselines`) into `W/validate/runs/`
(the same run directories and claims as `validate`, so the full stage reuses them later) and prints
their test and holdout top-1. README "Label smoothing for the hard-label students":

  python benchmarks/validate_entries.py \
    --config=configs/fashion_mnist.py:validate,holdout=5000,seeds=3 --workdir=W \
    --config.validate.baselines='("real_hard",)' --config.student.hard_label_smoothing=0.1

README "IPC 50 in the default run's time" (the random subset's student alone, 40,000 steps):

  python benchmarks/validate_entries.py --entries=real_soft \
    --config=configs/fashion_mnist.py:validate,ipc=50 --workdir=W \
    --config.validate.baselines='("real_soft",)' --config.student.epochs=2000

W holds `squeeze/` and `recover/` (the teacher, and the recovered images that fix the per-class counts).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from sre2l_jax import parallel, validate
from sre2l_jax.metrics import mean_std, mean_std_text

CONFIG = config_flags.DEFINE_config_file("config", None,
                                         "Config file, e.g. configs/fashion_mnist.py:validate")
WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with squeeze/ and recover/.")
ENTRIES = flags.DEFINE_list("entries", ["real_hard", "synthetic_hard"],
                            "validate entries to train: sre2l and/or those of validate.baselines.")


def train_entries(config, workdir: str, entries: list[str]) -> dict[str, list[dict]]:
    """Every run of `config` whose entry is in `entries` (entry → results in seed order)."""
    _, _, students, runs = validate.prepare(config, workdir, keep=lambda run: run.entry in entries)
    if not runs:
        raise ValueError(f"no run of validate has an entry in {entries}: the entries are sre2l and "
                         f"validate.baselines {tuple(config.validate.baselines)}")
    return students.train_logged(runs)


def main(argv) -> None:
    del argv
    config = CONFIG.value
    parallel.use_cpu_devices(config.cpu_devices)
    results_by_entry = train_entries(config, os.path.abspath(WORKDIR.value), ENTRIES.value)
    for entry, results in results_by_entry.items():
        for key in ("top1", "holdout_top1"):
            values = [r[key] for r in results if key in r]
            if values:
                text = mean_std_text(*mean_std(values), len(values))
                print(f"{entry} {key}: {text}  per seed {values}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
