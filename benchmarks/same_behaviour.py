r"""Does a code change keep the pipeline's outputs bit for bit? Runs two revisions, compares them.

  python benchmarks/same_behaviour.py --before=REV [--after=HEAD] [--out=DIR]

For each revision (checked out with `git worktree` into DIR, or the working tree for `--after=.`)
it runs, through the command line a user types:
  1. `configs/fashion_mnist.py:all,runlocal` (squeeze, recover, validate with baselines);
  2. a non-default variant: real-image init plus a second teacher (multi-teacher recovery and
     ensemble soft labels), seed 1, the first run's teacher as the extra one;
and records the SHA-256 of every recovered PNG and every student's top-1/top-5. It prints the
differences and exits 1 when there are any. Same machine for both, so floats are comparable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code_dir: str, workdir: str, config_arg: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "sre2l_jax.main", f"--config=configs/fashion_mnist.py:{config_arg}",
           f"--workdir={workdir}", *overrides]
    env = {**os.environ, "PYTHONPATH": code_dir}
    subprocess.run(cmd, cwd=code_dir, env=env, check=True, stdout=subprocess.DEVNULL)


def outputs(workdir: str) -> dict:
    """PNG hashes and student accuracies of one finished workdir."""
    images = {}
    root = os.path.join(workdir, "recover", "images")
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                images[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    with open(os.path.join(workdir, "validate", "summary.json")) as f:
        summary = json.load(f)
    students = {"sre2l": [summary["top1"], summary["top5"]]}
    for name in summary.get("baselines", []):
        students[name] = [summary[name]["top1"], summary[name]["top5"]]
    with open(os.path.join(workdir, "squeeze", "summary.json")) as f:
        teacher = json.load(f)["top1"]
    return {"images": images, "students": students, "teacher_top1": teacher}


def run_revision(code_dir: str, out: str) -> dict:
    plain, variant = os.path.join(out, "plain"), os.path.join(out, "variant")
    _run(code_dir, plain, "all,runlocal")
    teacher = os.path.join(plain, "squeeze", "model")
    _run(code_dir, variant, "all,runlocal", "--config.seed=1", "--config.recover.init=real_random",
         f"--config.recover.extra_teachers=('{teacher}',)")
    return {"plain": outputs(plain), "variant": outputs(variant)}


def checkout(rev: str, out: str) -> str:
    if rev == ".":
        return REPO
    path = os.path.join(out, f"src_{rev.replace('/', '_')}")
    if not os.path.isdir(path):
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", path, rev], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in differences(a.get(k), b.get(k), f"{prefix}/{k}")]
    return [] if a == b else [f"{prefix}: {a} != {b}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision before the change")
    ap.add_argument("--after", default=".", help="git revision after it ('.' = the working tree)")
    ap.add_argument("--out", default="", help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="same_behaviour_")
    os.makedirs(out, exist_ok=True)
    results = {}
    for label, rev in (("before", args.before), ("after", args.after)):
        cached = os.path.join(out, f"{label}.json")
        if not os.path.exists(cached):
            with open(cached, "w") as f:
                json.dump(run_revision(checkout(rev, out), os.path.join(out, label)), f, indent=1)
        with open(cached) as f:
            results[label] = json.load(f)
    diffs = differences(results["before"], results["after"])
    n_png = sum(len(results["before"][k]["images"]) for k in ("plain", "variant"))
    print(f"compared {n_png} recovered PNGs and "
          f"{sum(len(results['before'][k]['students']) for k in ('plain', 'variant'))} students "
          f"of {args.before} and {args.after} (scratch: {out})")
    for d in diffs:
        print("DIFFERS", d)
    print("identical" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
