r"""A 1000-class dry run of the ImageNet configuration, over simulated hosts.

  python benchmarks/imagenet_dryrun.py --out=DIR [--size=224] [--width=64] [--processes=2] [--devices=4]

Makes an ImageNet-shaped ImageFolder in DIR/data (1000 wnid-named classes × --train JPEGs at
size², one val JPEG per class), then runs `configs/imagenet.py` with its counts cut to a handful
as --processes local processes × --devices simulated CPU devices joined by jax.distributed:
squeeze (a randomly initialized ResNet-18 trained --squeeze-steps steps), recover IPC 2 with the
published composition (100 classes × 1 image per batch: 20 batches over all devices), relabel with
top-k logits, validate (one student, one epoch). It checks the output tree (1000 class folders ×
2 images), that every host wrote images, the manifest, the label files; and reports wall time and
peak host RSS of every stage and process. The test suite runs it at 32² with width 8.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run each stage process through this prologue: its peak RSS is printed when it exits.
PROLOGUE = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('PEAK_RSS_MIB', "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)); "
            "sys.argv = ['sre2l_jax.main'] + sys.argv[1:]; "
            "runpy.run_module('sre2l_jax.main', run_name='__main__')")


def make_tree(root: str, classes: int, train: int, size: int) -> None:
    """Smooth random JPEGs (they compress like photos, unlike white noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", 1)):
        for c in range(classes):
            folder = os.path.join(root, split, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                path = os.path.join(folder, f"{i}.JPEG")
                if not os.path.exists(path):
                    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                    Image.fromarray(small).resize((size, size), Image.BILINEAR).save(path, quality=85)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(stage: str, args, workdir: str) -> dict:
    """All processes of one stage; (seconds, peak RSS per process, stdout per process)."""
    config = (f"--config=configs/imagenet.py:{stage},ipc=2,data_dir={os.path.join(args.out, 'data')}")
    overrides = [f"--config.data.image_size={args.size}", f"--config.data.eval_resize={args.size}",
                 f"--config.model.width={args.width}", f"--config.student.width={args.width}",
                 f"--config.squeeze.max_steps={args.squeeze_steps}", "--config.squeeze.batch_size=16",
                 "--config.squeeze.epochs=1", "--config.squeeze.warmup_epochs=0",
                 "--config.recover.iterations=2", "--config.recover.checkpoint_every=2",
                 "--config.student.epochs=1", "--config.student.batch_size=200",
                 "--config.student.eval_every_epochs=1", "--config.relabel.top_k=10",
                 "--config.validate.baselines=()", "--config.data.max_eval_examples=200",
                 f"--workdir={workdir}"]
    port, procs = _port(), []
    t = time.time()
    for pid in range(args.processes):
        env = {**os.environ, "PYTHONPATH": REPO, "SRE2L_COORDINATOR": f"127.0.0.1:{port}",
               "SRE2L_NUM_PROCESSES": str(args.processes), "SRE2L_PROCESS_ID": str(pid),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}
        procs.append(subprocess.Popen([sys.executable, "-c", PROLOGUE, config, *overrides], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"{stage}: a process failed ({p.returncode}): {err[-2000:]}")
    rss = [float(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_RSS_MIB")))
           for out, _ in outs]
    return {"seconds": time.time() - t, "peak_rss_mib": rss, "stdout": [out for out, _ in outs]}


def check(workdir: str, classes: int, stages: dict) -> dict:
    """The recovered tree, the manifest, every host's share, the label files."""
    images = os.path.join(workdir, "recover", "images")
    folders = sorted(os.listdir(images))
    per_folder = {len([f for f in os.listdir(os.path.join(images, d)) if f.endswith(".png")])
                  for d in folders}
    manifest = json.load(open(os.path.join(workdir, "recover", "manifest.json")))
    written = [int(line.split()[-2]) for out in stages["recover"]["stdout"] for line in out.splitlines()
               if line.startswith("recover: this process wrote")]
    labels = json.load(open(os.path.join(workdir, "relabel", "meta.json")))
    assert len(folders) == classes and per_folder == {2}, (len(folders), per_folder)
    assert len(manifest["images"]) == 2 * classes
    assert len(written) == len(stages["recover"]["stdout"]) and all(written) and sum(written) == 2 * classes
    assert labels["complete"] and labels["top_k"] == 10
    return {"class_folders": len(folders), "images": len(manifest["images"]), "written_per_host": written,
            "label_bytes_per_image_epoch": labels["bytes_per_image_epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train", type=int, default=2, help="train JPEGs per class")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--devices", type=int, default=4, help="simulated devices per process")
    ap.add_argument("--squeeze-steps", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    if args.classes != 1000:
        raise SystemExit("configs/imagenet.py has 1000 classes; the dry run keeps them all")
    t = time.time()
    make_tree(os.path.join(args.out, "data"), args.classes, args.train, args.size)
    data_s = time.time() - t
    workdir = os.path.join(args.out, "w")
    stages = {s: run_stage(s, args, workdir) for s in ("squeeze", "recover", "relabel", "validate")}
    result = {"setup": vars(args), "data_seconds": data_s, **check(workdir, args.classes, stages),
              "stages": {s: {k: v for k, v in r.items() if k != "stdout"} for s, r in stages.items()}}
    with open(os.path.join(args.out, "dryrun.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"1000-class dry run: {args.processes} processes × {args.devices} devices, {args.size}², "
          f"width {args.width}; data {data_s:.0f} s")
    print("| stage | wall s | peak RSS per host (MiB) |\n|---|---|---|")
    for s, r in result["stages"].items():
        print(f"| {s} | {r['seconds']:.0f} | {', '.join(f'{m:.0f}' for m in r['peak_rss_mib'])} |")
    print(f"tree: {result['class_folders']} class folders × 2 images; written per host "
          f"{result['written_per_host']}; top-10 labels {result['label_bytes_per_image_epoch']:.0f} "
          "bytes per image-epoch")


if __name__ == "__main__":
    main()
