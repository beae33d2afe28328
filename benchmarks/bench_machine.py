"""Machine description, the FP32 peak estimate and the one-case-per-subprocess runner of bench.py."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

RESULT_TAG = "BENCH_RESULT "
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def recover_setup(stem: str, res: int):
    """(num_classes, α_BN, lr, jitter) of the recipe the case stands for (SPEC §2)."""
    if stem == "imagenet":
        return 1000, 0.01, 0.25, (0, 32)
    return 200, 1.0, 0.1, (-4, 4)  # Tiny-ImageNet's low-res recipe


def _cpuinfo() -> dict:
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in info:  # the first processor's entry
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def peak_fp32(info: dict, cores: int) -> dict:
    """Peak FP32 GFLOP/s = cores × clock × FLOPs/cycle, FLOPs/cycle from the FMA/AVX flags.

    Two FMA pipes per core are assumed (every AVX2/AVX-512 core of the last decade has two):
    AVX-512 → 2 × 16 lanes × 2 = 64 FLOP/cycle, except AMD Zen 4 (family 25 with AVX-512), which
    executes 512-bit instructions as two 256-bit halves → 32; AVX2+FMA → 2 × 8 × 2 = 32; AVX
    without FMA → 16. The clock is /proc/cpuinfo's "cpu MHz" (under a hypervisor usually the
    nominal clock); turbo is ignored, so the real peak can be higher.
    """
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), info.get("cpu family", "")
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == "25":
        per_cycle, why = 32, "AVX-512 on AMD Zen 4 (2 × 256-bit FMA pipes, 512-bit ops double-pumped)"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512F, 2 × 512-bit FMA pipes"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2 + FMA, 2 × 256-bit FMA pipes"
    elif "avx" in flags:
        per_cycle, why = 16, "AVX without FMA (256-bit add + mul)"
    else:
        per_cycle, why = 8, "SSE only"
    try:
        ghz = float(info.get("cpu MHz", "0")) / 1000.0
    except ValueError:
        ghz = 0.0
    gflops = cores * ghz * per_cycle
    return {"gflops": gflops, "flops_per_cycle": per_cycle, "ghz": ghz, "cores": cores,
            "assumption": f"{cores} cores × {ghz:.3f} GHz × {per_cycle} FP32 FLOP/cycle ({why}); "
                          f"= {gflops:.0f} GFLOP/s, turbo ignored"}


def machine_info(argv: list[str]) -> dict:
    info = _cpuinfo()
    cores = num_cores()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name", platform.processor()),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cores": cores,
        "simd": sorted(f for f in flags if f.startswith(("avx", "fma"))),
        "peak_fp32": peak_fp32(info, cores),
        "python": platform.python_version(),
        "jax": _version("jax"), "jaxlib": _version("jaxlib"), "flax": _version("flax"),
        "torch": _version("torch"), "torchvision": _version("torchvision"), "grain": _version("grain"),
        "xla_flags_env": os.environ.get("XLA_FLAGS", ""),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, os.getcwd())
                               if sys.executable.startswith(os.getcwd()) else sys.executable,
                               *argv]),
    }


def run_worker(spec: dict, env_extra: dict | None = None, timeout: float = 3600) -> dict:
    """Run one case as `bench.py --worker=SPEC` in a fresh process; its last RESULT line is the answer.

    A fresh process per case keeps ru_maxrss peaks apart and lets XLA_FLAGS differ per case.
    """
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), f"--worker={json.dumps(spec)}"]
    t = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s", "spec": spec}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG):])
            out["process_seconds"] = round(time.time() - t, 1)
            return out
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"exit {proc.returncode}: {tail}", "spec": spec}


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
