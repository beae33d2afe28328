r"""Recovery throughput and memory on 1 and N devices (simulated CPU devices here; real ones elsewhere).

  python benchmarks/recover_devices.py [--devices 1 4] [--width 8] [--batches 4] [--iterations 100]
                                       [--code DIR]

Runs the `recover` stage through the command line with a random ResNet-18 teacher (low-res stem,
28×28×1, 10 classes, the Fashion-MNIST recipe, batch 100) on `--batches` batches, once per device
count, and prints ms per iteration of one round (from metrics.jsonl timestamps, after the first
logged chunk: compilation excluded), batch-iterations per second, and the peak RSS of the process.
`--code DIR` runs another checkout of the package (e.g. a `git worktree` of an older commit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_teacher(path: str, width: int) -> None:
    code = f"""
import jax, numpy as np
from sre2l_jax import checkpoint, models
from sre2l_jax.data.sources import FASHION_MNIST_CLASSES
m = models.create_model("resnet18", 10, {width}, "lowres")
v = models.init_variables(m, jax.random.key(0), (28, 28, 1))
checkpoint.save_model({path!r}, v, {{"arch": "resnet18", "width": {width}, "stem": "lowres",
    "num_classes": 10, "channels": 1, "image_size": 28, "mean": [0.2860], "std": [0.3530],
    "class_names": FASHION_MNIST_CLASSES, "top1": None, "source": "benchmark"}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": REPO})


def run(code_dir: str, teacher: str, workdir: str, devices: int, batches: int, iterations: int) -> dict:
    chunk = max(1, iterations // 10)
    args = [sys.executable, "-m", "sre2l_jax.main", "--config=configs/fashion_mnist.py:recover",
            f"--workdir={workdir}", f"--config.recover.teacher={teacher}",
            f"--config.recover.ipc={10 * batches}", f"--config.recover.iterations={iterations}",
            f"--config.log_every_steps={chunk}", f"--config.recover.checkpoint_every={iterations}"]
    env = {**os.environ, "PYTHONPATH": code_dir,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    subprocess.run(args, cwd=code_dir, env=env, check=True, stdout=subprocess.DEVNULL)
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with open(os.path.join(workdir, "recover", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rounds = len(rows) // (iterations // chunk)
    per_round = [rows[r * (iterations // chunk):(r + 1) * (iterations // chunk)] for r in range(rounds)]
    ms = [1000 * (rr[-1]["time"] - rr[0]["time"]) / (rr[-1]["step"] - rr[0]["step"]) for rr in per_round]
    ms_per_iteration = sum(ms) / len(ms)
    parallel = min(devices, batches)
    return {"devices": devices, "rounds": rounds, "ms_per_iteration": ms_per_iteration,
            "batch_iterations_per_s": 1000 * parallel / ms_per_iteration, "peak_rss_mib": rss_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--code", default=REPO)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="recover_devices_")
    teacher = os.path.join(tmp, "teacher")
    make_teacher(teacher, args.width)
    print(f"code {args.code}, ResNet-18 width {args.width}, 28², batch 100, {args.batches} batches, "
          f"{args.iterations} iterations")
    print("| devices | rounds | ms / iteration (one round) | batch-iterations / s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for n in args.devices:  # one process each: ru_maxrss of children is a running maximum
        r = run(args.code, teacher, os.path.join(tmp, f"d{n}"), n, args.batches, args.iterations)
        print(f"| {n} | {r['rounds']} | {r['ms_per_iteration']:.1f} | {r['batch_iterations_per_s']:.2f} "
              f"| {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
