r"""Benchmarks of sre2l_jax: recovery step (vs a PyTorch reference), scaling, student step, input
pipeline, peak memory and XLA/precision/vmap options. See benchmarks/README.md.

  python benchmarks/bench.py [--quick] [--out=benchmarks/results.json] [--cases=recover,scaling,...]

Every measurement runs in its own subprocess (`--worker=SPEC`), one after another, so that peak
RSS values do not mix, XLA_FLAGS can differ per case and PyTorch and JAX never share a process.
Prints one JSON document, then the Markdown tables; writes both to --out (and OUT with .md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import bench_machine
from bench_report import markdown

CASES = ("train", "recover", "scaling", "student", "pipeline", "memory", "options")
# Training-step cases: the Fashion-MNIST default's sizes and a wider/larger one (width, res, channels,
# squeeze batch, student batch).
CPU_DEVICES = 2  # configlib.base_config's cpu_devices
TRAIN_CASES = {"default 28²×1, width 8": (8, 28, 1, 128, 25), "32²×3, width 64": (64, 32, 3, 128, 100)}
# Timed iterations per call (after one warm-up iteration) and timed calls, by resolution.
ITERS = {"full": {16: 5, 28: 10, 32: 10, 64: 5, 224: 2}, "quick": {16: 1, 28: 1, 32: 1, 64: 1, 224: 1}}
REPEATS = {"full": 2, "quick": 1}
WARMUP = {"full": 1, "quick": 0}
SCALING_PIXEL_BATCH = {"full": 100, "quick": 25}
OPTIONS_BATCH = {"full": 100, "quick": 50}  # the options are compared within their block
SPEC_DEFAULTS = {"dtype": "float32", "nbatch": 1, "threads": os.cpu_count()}
BATCH = 100
XLA_OPTIONS = {
    "default": "",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "onednn": "--xla_cpu_use_onednn=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}
QUICK_XLA_OPTIONS = ("default", "eigen_single_thread")


class Runner:
    """Runs worker specs once each (identical specs are shared between tables)."""

    def __init__(self, mode: str, verbose: bool = True):
        self.mode, self.verbose, self.cache = mode, verbose, {}

    def __call__(self, spec: dict, env: dict | None = None) -> dict:
        key = json.dumps([spec, env or {}], sort_keys=True)
        if key not in self.cache:
            if self.verbose:
                print(f"[bench] {spec} {env or ''}", file=sys.stderr, flush=True)
            self.cache[key] = bench_machine.run_worker(spec, env)
            if self.verbose:
                r = self.cache[key]
                short = {k: v for k, v in r.items() if isinstance(v, int | float | str)}
                print(f"[bench]   -> {json.dumps(short)[:400]}", file=sys.stderr, flush=True)
        return self.cache[key]

    def recover(self, framework: str, stem: str, res: int, batch: int = BATCH, env: dict | None = None,
                **extra) -> dict:
        extra = {k: v for k, v in extra.items() if SPEC_DEFAULTS.get(k) != v}  # share identical runs
        spec = {"kind": f"{framework}_recover", "stem": stem, "res": res, "batch": batch,
                "iters": max(1, ITERS[self.mode][res] // extra.get("nbatch", 1)),
                "repeats": REPEATS[self.mode], **extra}
        if framework == "jax":  # quick: a warm-up call that runs no iteration; PyTorch always runs one
            spec["warmup"] = WARMUP[self.mode]
        return self(spec, env)


def recover_cases(quick: bool) -> list[tuple[str, str, int]]:
    cases = [("resnet18 low-res 32²", "lowres", 32), ("resnet18 low-res 64²", "lowres", 64)]
    if not quick:  # Fashion-MNIST's own size: Winograd pads its 14² and 7² maps to 16² and 8²
        cases.insert(0, ("resnet18 low-res 28²", "lowres", 28))
        cases.append(("resnet18 224²", "imagenet", 224))
    return cases


def run_recover(run: Runner, quick: bool, sizes: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    for name, stem, res in recover_cases(quick):
        if sizes and res not in sizes:
            continue
        jx = run.recover("jax", stem, res)
        pt = run.recover("torch", stem, res)
        fix = run.recover("jax", stem, res, patch="canonical_conv")
        wino = run.recover("jax", stem, res, patch="winograd")
        rows.append({"case": name, "stem": stem, "res": res, "batch": BATCH, "jax": jx, "torch": pt,
                     "jax_canonical_conv": fix, "jax_winograd": wino, "iters_timed": ITERS[run.mode][res]})
    return rows


def run_train(run: Runner, quick: bool) -> dict:
    """Squeeze and student steps, JAX vs PyTorch, back to back; then the real loops' steps/s."""
    iters, repeats = (2, 1) if quick else (10, 3)
    rows = []
    for name, (w, res, c, squeeze_b, student_b) in TRAIN_CASES.items():
        if quick and w > 8:
            continue
        base = {"width": w, "res": res, "channels": c, "iters": iters, "repeats": repeats}
        row = {"case": name}
        # JAX as the package runs on a 2-core CPU (config.cpu_devices = 2): the squeeze batch split
        # over two simulated devices, students two at a time (one per device); and on one device.
        for step, batch, kinds, jax_specs in (
                ("squeeze", squeeze_b, ("jax_train", "torch_train"),
                 {"jax": {"cpu_devices": CPU_DEVICES}, "jax_1dev": {"cpu_devices": 1}}),
                ("student", student_b, ("jax_student_step", "torch_student"),
                 {"jax": {"lanes": CPU_DEVICES}, "jax_1dev": {"lanes": 1}})):
            row[step] = {"batch": batch, "torch": run({"kind": kinds[1], **base, "batch": batch}),
                         **{k: run({"kind": kinds[0], **base, "batch": batch, **extra})
                            for k, extra in jax_specs.items()}}
        rows.append(row)
    loops = run({"kind": "jax_loops", "squeeze_steps": 110 if quick else 250,
                 "student_epochs": 110 if quick else 300, "cpu_devices": CPU_DEVICES})
    return {"steps": rows, "loops": loops}


def run_scaling(run: Runner) -> dict:
    """Its own runs, back to back (not section 1's): on a shared machine the load drifts."""
    pix_batch = SCALING_PIXEL_BATCH[run.mode]

    def sc(res, batch):  # the package's default (Winograd) step
        return run.recover("jax", "lowres", res, batch=batch, block="scaling", patch="winograd")

    by_batch = [{"batch": b, "res": 32, **sc(32, b)} for b in (25, 50, 100)]
    by_pixels = [{"batch": pix_batch, "res": r, **sc(r, pix_batch)} for r in (16, 32, 64)]
    return {"by_batch": by_batch, "by_pixels": by_pixels}


def run_student(run: Runner) -> dict:
    k = 5 if run.mode == "full" else 1
    return {"res": 32, "batch": BATCH, "width": 64,
            **run({"kind": "jax_student", "res": 32, "batch": BATCH, "iters": k})}


def run_pipeline(run: Runner) -> dict:
    n = 200 if run.mode == "full" else 40
    return run({"kind": "jax_pipeline", "batches": n, "steps": n // 3})


def run_memory(run: Runner, quick: bool) -> list[dict]:
    return [{"case": name, "jax": run.recover("jax", stem, res, patch="winograd"),
             "torch": run.recover("torch", stem, res)} for name, stem, res in recover_cases(quick)]


def run_options(run: Runner, quick: bool) -> dict:
    """Every option against a default measured inside this block (start and end), not the
    section-1 run: on a shared machine the load drifts between sections."""
    b = OPTIONS_BATCH[run.mode]
    sizes = (32,) if quick else (32, 64)

    def opt(res, **extra):
        return run.recover("jax", "lowres", res, batch=b, block="options", **extra)

    base = {r: opt(r) for r in sizes}
    xla = [{"option": name, "xla_flags": flags,
            **(opt(32, env={"XLA_FLAGS": flags}) if flags else base[32])}
           for name, flags in XLA_OPTIONS.items() if not quick or name in QUICK_XLA_OPTIONS]
    precision = [{"dtype": dt, "res": r, **(base[r] if dt == "float32" else opt(r, dtype=dt))}
                 for r in sizes for dt in ("float32", "bfloat16")]
    vmap = [{"nbatch": 1, **base[32]}, {"nbatch": 2, **opt(32, nbatch=2)}]
    fix = [{"res": r, "patch": p, **opt(r, patch=p)} for p in ("canonical_conv", "winograd") for r in sizes]
    # PyTorch's OpenMP threads degrade badly when the cores are shared (oversubscription): 1 thread
    # next to the authors' setting tells whether the PyTorch rows were distorted by other load.
    torch_threads = [{"threads": n, **run.recover("torch", "lowres", 32, batch=b, block="options",
                                                  threads=n)} for n in (os.cpu_count(), 1)]
    return {"batch": b, "xla_flags": xla, "precision": precision, "batches_per_call": vmap,
            "canonical_conv": fix, "torch_threads": torch_threads,
            "default_at_end": opt(32, rep="end")}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations, no 224² case, fewer options")
    ap.add_argument("--out", default=os.path.join(bench_machine.HERE, "results.json"))
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--recover_sizes", default="", help="recover case: only these resolutions, e.g. 28,32")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv[1:])
    if args.worker:
        return worker(json.loads(args.worker))

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    machine = bench_machine.machine_info(argv)
    run = Runner("quick" if args.quick else "full")
    results: dict = {"mode": run.mode}
    if "train" in cases:
        results["train"] = run_train(run, args.quick)
    if "recover" in cases:
        sizes = tuple(int(r) for r in args.recover_sizes.split(",") if r.strip())
        results["recover"] = run_recover(run, args.quick, sizes)
    if "scaling" in cases:
        results["scaling"] = run_scaling(run)
    if "student" in cases:
        results["student"] = run_student(run)
    if "pipeline" in cases:
        results["pipeline"] = run_pipeline(run)
    if "memory" in cases:
        results["memory"] = run_memory(run, args.quick)
    if "options" in cases:
        results["options"] = run_options(run, args.quick)
    doc = {"machine": machine, "results": results}
    md = markdown(machine, results)
    print(json.dumps(doc, indent=1))
    print()
    print(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(md + "\n")


def worker(spec: dict) -> None:
    import bench_jax
    import bench_torch
    import bench_train

    kind = spec["kind"]
    mod = next(m for m in (bench_train, bench_torch, bench_jax) if kind in m.WORKERS)
    result = mod.WORKERS[kind](spec)
    result["spec"] = spec
    bench_machine.emit(result)


if __name__ == "__main__":
    main(sys.argv)
