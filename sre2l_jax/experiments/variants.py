r"""SRe²L and the later recovery variants through one engine, one teacher and one student recipe.

  python -m sre2l_jax.experiments.variants --config=configs/fashion_mnist.py:all,seeds=3 --workdir=workdirs/fm

Runs the plain pipeline in WORKDIR (SRe²L and the validate baselines: random real images with soft
labels, with hard labels), then each variant's recover → relabel (with stored labels only) →
validate in WORKDIR/variants/<name>/ with the baselines switched off — except, once per list of
extra teachers, the random real subset under that ensemble's soft labels, which the
ensemble-labelled variants' IOR is measured against — and writes WORKDIR/variants/table.md and
results.json (the report shows them). The multi-teacher row needs a second teacher: given with
--extra_teachers, or trained here into WORKDIR/variants/teacher2 (twice the width, half the epochs,
seed + 1: a different model of the same family, as G-VBSM mixes architectures).
"""

from __future__ import annotations

import copy
import json
import os

import jax
from absl import flags

from sre2l_jax import main as cli
from sre2l_jax import recipes, report, squeeze, stages, teachers
from sre2l_jax.data import mosaics
from sre2l_jax.metrics import mean_std_text
from sre2l_jax.stage_state import write_json_atomic, write_text_atomic

_EXTRA = flags.DEFINE_list("extra_teachers", [], "Model checkpoints for the multi-teacher row.")
_ONLY = flags.DEFINE_list("only", [], "Run only these variants (default: all).")
_SKIP_PLAIN = flags.DEFINE_bool(
    "skip_plain", False, "Train only the teacher of the plain run, not its SRe²L students and baselines "
    "(measured elsewhere): rows labelled by the teacher then have no IOR.")

# name -> recover settings on top of the data set's SRe²L recipe.
VARIANTS = {
    "cda": {"crop": True, "crop_schedule": "cosine"},
    "real_init": {"init": "real_random"},
    "cda+real_init": {"crop": True, "crop_schedule": "cosine", "init": "real_random"},
    "multi_teacher": {"extra_teachers": None},  # filled in with the teacher list
    "real_medium": {"init": "real_medium"},
    "real_mosaic": {"init": "real_mosaic"},
    # Real init with a tenth of the iterations: how far the BN-matching optimization should move
    # the real images (0 iterations would be baseline (a) with another random subset).
    "real_init_100it": {"init": "real_random", "iterations": 100},
    "rded": {"method": "rded"},
    # RDED's scoring, another choice: the lowest-loss image of each k-means cluster of the teacher's
    # features (diversity), each cluster's image nearest its mean, the images around the median loss.
    "rded_cluster": {"method": "rded", "rded_select": "cluster"},
    "rded_medoid": {"method": "rded", "rded_select": "medoid"},
    "rded_median": {"method": "rded", "rded_select": "median"},
    # EDC (CIFAR-10 script): real init, category-aware BN matching (α 0.5), 75 iterations of Adam
    # lr 0.05 on all images in one batch with RandomResizedCrop, briefly trained backbones rotated
    # per iteration and their ensemble as the soft-label teacher.
    "edc": {**recipes.EDC_RECOVERY, "extra_teachers": "backbones"},
    # EDC as its Tiny-ImageNet / ImageNet scripts run it: started from RDED's selected images.
    "edc_rded": {**recipes.EDC_RECOVERY, "init": "rded", "extra_teachers": "backbones"},
    # RDED's images with EDC's soft labels (teacher + backbones): what the labels alone change.
    "rded_ensemble": {"method": "rded", "extra_teachers": "backbones"},
    # IDC's multi-formation over RDED's choice: 2 × 2 of the class's easiest whole images (scored
    # as the student will see them) in each stored image, the student training on each cell at
    # full size (at IDC's same compute).
    "rded_mf": {"method": "rded", "rded_factor": 2, "rded_crop_scale": (1.0, 1.0),
                "rded_score_view": "decoded", "student.multi_formation": 2},
    # Bit planes over RDED's choice: 2 of the class's easiest crops at 4 bits in each stored image
    # (the same bytes), the student reading both (at the same compute).
    "rded_b4": {"method": "rded", "rded_bits": 4, "student.bit_depth": 4},
}
BASELINES = {"real_soft": "(a) random real + soft labels", "real_hard": "(b) random real + hard labels",
             "synthetic_hard": "(c) SRe²L images + hard labels"}


def second_teacher(config, workdir: str) -> str:
    """Train (once) a second teacher: 2× width, half the epochs, another seed."""
    c2 = copy.deepcopy(config)
    c2.unlock()
    c2.seed = config.seed + 1
    c2.model.width = 2 * config.model.width
    c2.squeeze.epochs = max(1, config.squeeze.epochs // 2)
    sub = os.path.join(workdir, "variants", "teacher2")
    stages.run_once(c2, sub, "squeeze")
    # Not default_path: by now recover.teacher names the main teacher, which it would return.
    return teachers.squeezed_path(sub)


def backbone_teachers(config, workdir: str) -> list[str]:
    """Train (once each) `recipes.EDC_BACKBONES` with the squeeze recipe; their model paths."""
    paths = []
    for i in range(len(recipes.EDC_BACKBONES)):
        c = copy.deepcopy(config)
        c.unlock()
        c.squeeze.backbones = recipes.EDC_BACKBONES
        ci = squeeze.backbone_config(c, i)
        sub = os.path.join(workdir, "variants", f"backbone{i}")
        stages.run_once(ci, sub, "squeeze")
        paths.append(teachers.squeezed_path(sub))
    return paths


def own_baseline_name(variant: str, ensemble: bool, factor: int, bits: int = 8) -> str:
    """The row of the random real subset under `variant`'s ensemble labels and/or its format."""
    what = [f"{variant}'s ensemble soft labels"] if ensemble else []
    what += [f"{variant}'s multi-formation ({factor}×{factor})"] if factor > 1 else []
    what += [f"{variant}'s {bits}-bit planes"] if bits < 8 else []
    return "(a) random real + " + " and ".join(what)


def _variant_config(config, settings: dict, workdir: str, extra_teachers: list[str] | None):
    """`config` with a variant's recover settings and student format (multi-formation factor, bit
    depth); extra teachers trained here when asked for. A format that gives the student n× the
    images keeps IDC's same compute: epochs ÷ n."""
    c = copy.deepcopy(config)
    for key, value in settings.items():
        if key in ("student.multi_formation", "student.bit_depth"):
            c.student[key.split(".")[1]] = value
            continue
        if key == "extra_teachers":
            value = tuple(backbone_teachers(config, workdir) if value == "backbones" else
                          extra_teachers or [second_teacher(config, workdir)])
        if key == "batch_size" and value == "all":
            value = config.recover.ipc * config.data.num_classes
        c.recover[key] = value
    plain, st = config.student, c.student
    # the same steps as the plain run, whatever format its config has
    c.student.epochs = max(1, plain.epochs * mosaics.images_per_stored(plain.multi_formation, plain.bit_depth)
                           // mosaics.images_per_stored(st.multi_formation, st.bit_depth))
    return c


def _row(name: str, val: dict, rec: dict | None, random_soft: float | None = None) -> dict:
    return {"name": name, "top1": val["top1"], "top1_std": val.get("top1_std", 0.0),
            "per_seed": [p["top1"] for p in val.get("per_seed", [])],
            "holdout_top1": val.get("holdout_top1"),
            "ior": None if random_soft is None else val["top1"] - random_soft,
            "teacher_acc_on_images": None if rec is None else rec["teacher_accuracy"]}


def run_variants(config, workdir: str, extra_teachers: list[str] | None = None,
                 only: list[str] | None = None, skip_plain: bool = False) -> list[dict]:
    """The plain run and the variants' rows; `skip_plain` trains only the plain run's teacher (its
    students were measured elsewhere), so the rows labelled by that teacher carry no IOR: a
    random subset of other seeds or settings would not be the same recipe."""
    unknown = set(only or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    config.unlock()
    random_soft, rows = None, []
    if skip_plain:
        stages.run_once(config, workdir, "squeeze")
    else:
        plain = stages.run_all(config, workdir)
        random_soft = plain["validate"].get("real_soft", {}).get("top1")
        rows = [_row("sre2l", plain["validate"], plain["recover"], random_soft)]
        rows += [_row(BASELINES[b], plain["validate"][b], None) for b in config.validate.baselines]
    config.recover.teacher = teachers.default_path(config, workdir)
    config.validate.baselines = ()
    # (extra teachers, multi-formation factor) -> the random subset's top-1 under those labels
    # and that format; the plain run's is the teacher-labelled, one-image-per-image subset.
    own_random: dict[tuple, float] = {((), config.student.multi_formation, config.student.bit_depth):
                                      random_soft}
    for name, settings in VARIANTS.items():
        if only and name not in only:
            continue
        c = _variant_config(config, settings, workdir, extra_teachers)
        # An ensemble labels this variant's images, or the student reads them as mosaics: its IOR
        # is against the random subset under the same labels and format (trained once per pair).
        key = (tuple(c.recover.extra_teachers), c.student.multi_formation, c.student.bit_depth)
        if key not in own_random:
            c.validate.baselines = ("real_soft",)
        sub = os.path.join(workdir, "variants", name)
        summaries = {s: stages.run_once(c, sub, s) for s in ("recover", "relabel", "validate")}
        if key not in own_random:
            own_random[key] = summaries["validate"]["real_soft"]["top1"]
            rows.append(_row(own_baseline_name(name, bool(key[0]), key[1], key[2]),
                             summaries["validate"]["real_soft"], None))
        images, labels, names = report.synthetic_arrays(sub)
        report.image_grid(images, labels, names, os.path.join(workdir, "variants", f"grid_{name}.png"),
                          title=f"variant: {name}")
        rows.append(_row(name, summaries["validate"], summaries["recover"], own_random[key]))
    if jax.process_index() == 0:
        out = os.path.join(workdir, "variants")
        rows = _merge_with_earlier(os.path.join(out, "results.json"), rows)
        write_json_atomic(os.path.join(out, "results.json"), rows)
        table = variants_table(config, rows)
        write_text_atomic(os.path.join(out, "table.md"), table)
        if not skip_plain:  # the report is the plain run's, with this table beside it
            report.write_report(config, workdir)
        print(table, flush=True)
    return rows


def _merge_with_earlier(path: str, rows: list[dict]) -> list[dict]:
    """Keep rows of variants run earlier (`--only` runs add to the table), newest result wins."""
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        earlier = {r["name"]: r for r in json.load(f)}
    earlier.update({r["name"]: r for r in rows})
    return sorted(earlier.values(), key=lambda r: _table_position(r["name"]))


def _table_position(name: str) -> tuple[int, int]:
    """SRe²L, the plain baselines, then each variant after its own random subset, if any."""
    plain = ["sre2l", *BASELINES.values()]
    if name in plain:
        return plain.index(name), 0
    owner = name.removeprefix("(a) random real + ").split("'s ")[0]
    if owner not in VARIANTS:
        return len(plain) + len(VARIANTS), 0
    return len(plain) + list(VARIANTS).index(owner), int(owner == name)


def variants_table(config, rows: list[dict]) -> str:
    st = config.student
    lines = [f"{config.data.name}, IPC {config.recover.ipc}; every row: student {st.arch} width "
             f"{st.width}, {st.epochs} epochs, batch {st.batch_size}, seeds "
             f"{list(config.validate.seeds)} (mean ± std); IOR = top-1 − random real + the same "
             "soft labels (an ensemble's for the rows with extra teachers)", "",
             "| method | test top-1 % | holdout top-1 % | IOR | per seed | teacher acc. on images % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        tacc = "—" if r["teacher_acc_on_images"] is None else f"{r['teacher_acc_on_images']:.1f}"
        seeds = ", ".join(f"{t:.2f}" for t in r["per_seed"])
        top1 = mean_std_text(r["top1"], r["top1_std"], len(r["per_seed"]))
        holdout = "—" if r.get("holdout_top1") is None else f"{r['holdout_top1']:.2f}"
        ior = "—" if r.get("ior") is None else f"{r['ior']:+.2f}"
        lines.append(f"| {r['name']} | {top1} | {holdout} | {ior} | {seeds} | {tacc} |")
    return "\n".join(lines) + "\n"


def main(argv):
    config, workdir = cli.setup(argv)
    run_variants(config, workdir, _EXTRA.value, _ONLY.value, _SKIP_PLAIN.value)


if __name__ == "__main__":
    cli.launch(main)
