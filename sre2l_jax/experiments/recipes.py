r"""Student recipes side by side: the same teacher, the same recovered images, one table.

  python -m sre2l_jax.experiments.recipes --config=configs/fashion_mnist.py:all,seeds=3 \
      --workdir=W --recipes=sre2l_paper,edc

Runs (or reuses) squeeze and recover in WORKDIR, then for each recipe the validate stage in
WORKDIR/recipes/<name>/ with the `student.*` settings of that recipe on top of the config, and
writes WORKDIR/recipes/table.md and results.json: test and holdout top-1 of every entry (SRe²L and
the baselines, all under the recipe) and DD-Ranking's IOR/HLR/LRS. `--set=key=value` (repeatable) adds
a `student.*` override to every recipe (for sweeps); `--name` names such a row.
"""

from __future__ import annotations

import ast
import copy
import os

import jax
from absl import flags

from sre2l_jax import main as cli
from sre2l_jax import recipes, stages, teachers
from sre2l_jax.formats import images as image_files
from sre2l_jax.metrics import mean_std_text
from sre2l_jax.stage_state import read_json, write_json_atomic, write_text_atomic

_RECIPES = flags.DEFINE_list("recipes", ["sre2l_paper", "edc"], "Named recipes to run.")
_SET = flags.DEFINE_multi_string("set", [], "student.key=value override for every recipe (repeat the "
                                  "flag for several; values are Python literals: crop_scale=(0.5,1.0)).")
_NAME = flags.DEFINE_string("name", "", "Row name suffix for --set sweeps.")

RECIPES = recipes.STUDENT_RECIPES


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set={pair}: expected key=value (one override per --set flag)")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run_recipes(config, workdir: str, names: list[str], extra: dict, suffix: str = "") -> list[dict]:
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    config.unlock()
    for stage in ("squeeze", "recover"):
        stages.run_once(config, workdir, stage)
    config.recover.teacher = teachers.default_path(config, workdir)
    config.relabel.images = image_files.default_dir(config, workdir)
    rows = []
    for name in names:
        c = copy.deepcopy(config)
        for key, value in {**RECIPES[name], **extra}.items():
            c.student[key] = value
        row_name = f"{name}{suffix}"
        summary = stages.run_once(c, os.path.join(workdir, "recipes", row_name), "validate")
        rows.append({"name": row_name, "student": c.student.to_dict(), "summary": summary})
    if jax.process_index() == 0:
        out = os.path.join(workdir, "recipes")
        earlier = {r["name"]: r for r in read_json(os.path.join(out, "results.json")) or []}
        earlier.update({r["name"]: r for r in rows})
        merged = list(earlier.values())
        write_json_atomic(os.path.join(out, "results.json"), merged)
        table = recipes_table(config, merged)
        write_text_atomic(os.path.join(out, "table.md"), table)
        print(table, flush=True)
    return rows


def recipes_table(config, rows: list[dict]) -> str:
    entries = ["sre2l", *config.validate.baselines]
    lines = [f"{config.data.name}, IPC {config.recover.ipc}: test top-1 % (holdout top-1 %) per entry, "
             f"seeds {list(config.validate.seeds)}", "",
             "| recipe | " + " | ".join(entries) + " | IOR | HLR | LRS |",
             "|---" * (len(entries) + 4) + "|"]
    for r in rows:
        s, n = r["summary"], len(r["summary"]["seeds"])
        cells = []
        for e in entries:
            entry = s if e == "sre2l" else s.get(e)
            if entry is None:
                cells.append("—")
                continue
            holdout = entry.get("holdout_top1")
            cells.append(mean_std_text(entry["top1"], entry["top1_std"], n)
                         + ("" if holdout is None else f" ({holdout:.2f})"))
        dd = s.get("dd_ranking") or {}
        cells += [f"{dd[k]:+.2f}" if k in dd else "—" for k in ("ior", "hlr")]
        cells.append(f"{dd['lrs']:.4f}" if "lrs" in dd else "—")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    config, workdir = cli.setup(argv)
    run_recipes(config, workdir, _RECIPES.value, _overrides(_SET.value), _NAME.value)


if __name__ == "__main__":
    cli.launch(main)
