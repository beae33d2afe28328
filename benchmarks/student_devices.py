r"""How far a student trained on 1 device drifts from the same student trained on N devices.

  python benchmarks/student_devices.py --workdir=W [--devices 1 4] [--config=CONFIG]

CONFIG defaults to configs/fashion_mnist.py:validate. W must hold a teacher (`squeeze/model`) and
a recovered set (`recover/`), e.g. from
`python -m sre2l_jax.main --config=configs/fashion_mnist.py:recover --workdir=W` after a squeeze.
Each device count trains the SRe²L student of seed 0 (no baselines) with the config's recipe in a
copy of W (`W/student_devices/d<N>`), through the command line; the script prints the loss at
chosen steps, the largest parameter difference and the top-1 of each. Data-parallel steps sum the
batch's gradient and BN statistics across devices, so float addition order differs with the
device count; training amplifies that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(config: str, workdir: str, devices: int) -> None:
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    subprocess.run([sys.executable, "-m", "sre2l_jax.main", f"--config={config}", f"--workdir={workdir}",
                    "--config.validate.baselines=()", "--config.validate.seeds=(0,)",
                    "--config.log_every_steps=1"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--config", default="configs/fashion_mnist.py:validate")
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    from sre2l_jax import checkpoint

    out = {}
    for n in args.devices:
        w = os.path.join(args.workdir, "student_devices", f"d{n}")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(w)
        for part in ("squeeze", "recover"):
            shutil.copytree(os.path.join(args.workdir, part), os.path.join(w, part))
        train(args.config, w, n)
        run = os.path.join(w, "validate", "runs", "sre2l_seed0")
        with open(os.path.join(w, "validate", "metrics.jsonl")) as f:
            losses = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
        with open(os.path.join(run, "result.json")) as f:
            top1 = json.load(f)["top1"]
        out[n] = (losses, checkpoint.load_model(os.path.join(run, "model"))[0], top1)
    ref_losses, ref_vars, _ = out[args.devices[0]]
    steps = sorted(ref_losses)
    shown = [s for s in (1, 2, 5, 10, 50, 100, 1000, steps[-1]) if s in ref_losses]
    print(f"{args.config}: SRe²L student, seed 0, {steps[-1]} steps")
    print("| devices | top-1 | " + " | ".join(f"loss @{s}" for s in shown) + " | max |Δparam| vs 1 |")
    print("|---" * (len(shown) + 3) + "|")
    for n, (losses, variables, top1) in out.items():
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(_leaves(ref_vars), _leaves(variables)))
        rel = [abs(losses[s] - ref_losses[s]) / abs(ref_losses[s]) for s in shown]
        print(f"| {n} | {top1:.2f} | " + " | ".join(f"{losses[s]:.5g} ({r:.1e})" for s, r in zip(shown, rel))
              + f" | {diff:.3g} |")


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


if __name__ == "__main__":
    main()
