r"""The device benchmark: one short, prepared run on a machine with an accelerator.

  python benchmarks/device_bench.py --out=DIR            # on a GPU machine: about 8 minutes
  python benchmarks/device_bench.py --tiny --out=DIR     # anywhere, tiny sizes (a test runs this)

Writes DIR/RESULTS_gpu.md (a Markdown table headed by the card's name) and DIR/device_bench.json:
  1. the recovery step at 224², batch 100 (ImageNet stem, the authors' loop): ResNet-18 and
     ResNet-50, float32 and bfloat16; JAX vs PyTorch eager vs `torch.compile`; ms/iteration,
     TFLOP/s (XLA's FLOP count of the iteration), peak device memory;
  2. the student step (teacher logits + KL + AdamW), JAX vs PyTorch;
  3. determinism: the same JAX recovery call twice, without and with
     `--xla_gpu_deterministic_ops=true`, max |Δ| of the images;
  4. `configs/fashion_mnist.py:all,runlocal` end to end on a generated Fashion-MNIST-shaped IDX
     set (the device has no data package), time per stage.
Each case is its own process (bench.py's runner); a case that would start after the time budget
is listed as skipped rather than run. On a machine without the packages the pipeline needs
(grain, ml_collections, tensorflow-datasets), step cases still run and the table says what is
missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import bench_machine
import numpy as np

FULL = {"res": 224, "batch": 100, "iters": 10, "width": 64, "student": (64, 64, 256)}
TINY = {"res": 32, "batch": 2, "iters": 1, "width": 8, "student": (16, 8, 4)}


class Budget:
    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def run(self, spec: dict, env: dict | None = None) -> dict:
        if time.time() > self.end:
            return {"error": "skipped: over the time budget", "spec": spec}
        return bench_machine.run_worker(spec, env, timeout=max(30.0, self.end - time.time() + 60))


def recovery_cases(budget: Budget, sizes: dict, tiny: bool) -> list[dict]:
    rows = []
    base = {"stem": "imagenet", "res": sizes["res"], "batch": sizes["batch"], "iters": sizes["iters"],
            "repeats": 1 if tiny else 2, "width": sizes["width"]}
    for arch in ("resnet18", "resnet50"):
        for dtype in ("float32", "bfloat16"):
            spec = {**base, "arch": arch, "dtype": dtype}
            row = {"arch": arch, "dtype": dtype,
                   "jax": budget.run({**spec, "kind": "jax_recover", "patch": "stock"}),
                   "torch": budget.run({**spec, "kind": "torch_recover"})}
            if not tiny:  # torch.compile on a CPU compiles C++ for minutes: GPU only
                row["torch_compile"] = budget.run({**spec, "kind": "torch_recover", "compile": True})
            rows.append(row)
    return rows


def determinism_cases(budget: Budget, sizes: dict) -> list[dict]:
    spec = {"kind": "jax_recover", "stem": "imagenet", "res": sizes["res"], "batch": sizes["batch"],
            "iters": sizes["iters"], "repeats": 1, "width": sizes["width"], "patch": "stock",
            "check_repeat": True, "block": "determinism"}
    return [{"xla_flags": flags, "result": budget.run(spec, {"XLA_FLAGS": flags} if flags else None)}
            for flags in ("", "--xla_gpu_deterministic_ops=true")]


def fake_fashion(directory: str, n_train: int = 2048, n_test: int = 512) -> None:
    """Random IDX files in Fashion-MNIST's layout (the directory name makes the class names)."""
    import gzip
    import struct

    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                            ("labels", (np.arange(n) % 10).astype(np.uint8))):
            header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(os.path.join(directory, f"{prefix}-{kind}-idx{array.ndim}-ubyte.gz"), "wb") as f:
                f.write(header + array.tobytes())


def runlocal_case(budget: Budget) -> dict:
    if time.time() > budget.end:
        return {"error": "skipped: over the time budget"}
    tmp = tempfile.mkdtemp(prefix="device_bench_")
    data = os.path.join(tmp, "fashion-mnist")
    os.makedirs(data)
    fake_fashion(data)
    workdir = os.path.join(tmp, "w")
    env = {**os.environ, "PYTHONPATH": bench_machine.ROOT}
    t = time.time()
    cmd = [sys.executable, "-m", "sre2l_jax.main", "--config=configs/fashion_mnist.py:all,runlocal",
           f"--config.data.dir={data}", f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=bench_machine.ROOT, env=env, capture_output=True, text=True,
                          timeout=max(60.0, budget.end - t + 120))
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-600:]}"}
    stages = {}
    for stage in ("squeeze", "recover", "validate"):  # relabel: skipped with online labels
        with open(os.path.join(workdir, stage, "done.json")) as f:
            stages[stage] = json.load(f)["summary"].get("seconds_this_run")
    return {"seconds": time.time() - t, "stages": stages}


def _ms(r: dict, key: str = "ms_per_iter") -> str:
    return f"{r[key]:.1f}" if key in r else r.get("error", "?")[:60]


def markdown(doc: dict) -> str:
    m, res = doc["machine"], doc["results"]
    lines = [f"# Device benchmark: {doc['device']}", "",
             f"{m['date']}; `{m['command']}`; jax {m['jax']}, torch {m['torch']}; "
             f"{'tiny sizes' if doc['tiny'] else 'recovery at 224², batch 100'}", "",
             "| model | dtype | JAX ms/it | JAX TFLOP/s | JAX peak MiB | PyTorch ms/it | torch.compile ms/it "
             "| PyTorch peak MiB | JAX speed vs eager |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["recovery"]:
        jx, pt, pc = r["jax"], r["torch"], r.get("torch_compile", {})
        flops = jx.get("flops_per_iter")
        tflops = f"{flops / jx['ms_per_iter'] / 1e9:.1f}" if flops and "ms_per_iter" in jx else "–"
        peak = ((jx.get("device_memory") or {}).get("peak_bytes_in_use") or 0) / 2**20
        both = "ms_per_iter" in pt and "ms_per_iter" in jx
        speed = f"{pt['ms_per_iter'] / jx['ms_per_iter']:.2f}×" if both else "–"
        lines.append(f"| {r['arch']} | {r['dtype']} | {_ms(jx)} | {tflops} | {peak:.0f} | {_ms(pt)} | "
                     f"{_ms(pc) if pc else '–'} | {pt.get('peak_device_mib') or 0:.0f} | {speed} |")
    st = res["student"]
    lines += ["", f"Student step (res {st['res']}, width {st['width']}, batch {st['batch']}): JAX "
              f"{_ms(st['jax'], 'ms_per_step')} ms, PyTorch {_ms(st['torch'], 'ms_per_step')} ms.", ""]
    for d in res["determinism"]:
        r = d["result"]
        diff = r.get("repeat_max_abs_diff")
        lines.append(f"- determinism, XLA_FLAGS='{d['xla_flags']}': same call twice, max |Δ| = "
                     + (f"{diff:.3g}" if diff is not None else r.get("error", "?")[:80]))
    rl = res["runlocal"]
    done = f"{rl['seconds']:.0f} s; stages {json.dumps(rl['stages'])}" if "seconds" in rl else None
    lines.append("- `:all,runlocal` on the device: " + (done or rl["error"][:200]))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, any machine (the CPU test)")
    ap.add_argument("--out", default=bench_machine.HERE)
    ap.add_argument("--budget", type=float, default=450.0, help="seconds after which cases are skipped")
    args = ap.parse_args()
    sizes = TINY if args.tiny else FULL
    budget = Budget(args.budget)
    res, w, b = sizes["student"]
    student = {"res": res, "width": w, "channels": 3, "batch": b, "iters": sizes["iters"], "repeats": 1}
    results = {"recovery": recovery_cases(budget, sizes, args.tiny),
               "student": {**student, "jax": budget.run({**student, "kind": "jax_student_step"}),
                           "torch": budget.run({**student, "kind": "torch_student"})},
               "determinism": determinism_cases(budget, sizes), "runlocal": runlocal_case(budget)}
    first = results["recovery"][0]
    device = first["torch"].get("device_name") or first["jax"].get("device_kind") or "unknown"
    doc = {"machine": bench_machine.machine_info(sys.argv), "device": device, "tiny": args.tiny,
           "results": results}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_bench.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = markdown(doc)
    with open(os.path.join(args.out, "RESULTS_gpu.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
