r"""Sweep SRe²L's own recovery knobs on Fashion-MNIST; prints teacher accuracy on the recovered images.

  python benchmarks/fashion_recover_sweep.py --teacher=W/squeeze/model --iterations=300 --out=/tmp/sweep
Each variant is `name:key=value;key=value` over `config.recover`; images land in OUT/<name>/recover.
"""

import argparse
import ast
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
import fashion_mnist

from sre2l_jax import recover

DEFAULT_VARIANTS = [
    "bn1_lr0.1:alpha_bn=1.0;lr=0.1",
    "bn0.1_lr0.25:alpha_bn=0.1;lr=0.25",
    "bn0.01_lr0.25:alpha_bn=0.01;lr=0.25",
    "nocrop_bn0.01:alpha_bn=0.01;lr=0.25;crop=False;jitter=(0, 4)",
    "crop0.5_bn0.01:alpha_bn=0.01;lr=0.25;crop_scale=(0.5, 1.0)",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", default="/tmp/fashion_sweep")
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS)
    args = ap.parse_args()
    rows = []
    for spec in args.variants:
        name, _, assigns = spec.partition(":")
        c = fashion_mnist.get_config(f"recover,iterations={args.iterations}")
        c.unlock()
        c.recover.teacher = os.path.abspath(args.teacher)
        for assign in filter(None, assigns.split(";")):
            k, v = assign.split("=", 1)
            c.recover[k] = ast.literal_eval(v)
        t = time.time()
        s = recover.run(c, os.path.join(args.out, name))
        rows.append((name, assigns, s["teacher_accuracy"], s["mean_final_ce"], time.time() - t))
        print(f"{name}: teacher acc {s['teacher_accuracy']:.1f}%  CE {s['mean_final_ce']:.3f}  "
              f"{time.time() - t:.0f}s", flush=True)
    print("\n| variant | settings | teacher acc. on recovered % | mean final CE | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | `{r[1]}` | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.0f} |")
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
