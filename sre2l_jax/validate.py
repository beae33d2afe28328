"""Stage 4, validate: train students from scratch on the synthetic set with the teacher's soft labels.

Entries: `sre2l` (the synthetic images, soft labels — online from the frozen teacher inside the
step, or replayed from `relabel`'s stored labels) and the baselines of `validate.baselines` with the
identical recipe (`student.*`): `real_soft` (a random real subset of the train split with the same
images per class, drawn from the seed, soft labels), `real_hard` (that subset, cross-entropy with
labels mixed by λ) and `synthetic_hard` (the synthetic images, hard labels). Every entry runs for
every seed of `validate.seeds`; `W/validate/summary.json` reports mean ± std (sample std, 0 for one
seed).

Each run trains (and resumes) as `student/trainer.py` says.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from sre2l_jax import ddranking, stage_state, teachers
from sre2l_jax.data import mosaics, sources, splits
from sre2l_jax.formats import images as image_files
from sre2l_jax.formats.labels import StoredLabels
from sre2l_jax.metrics import mean_std, mean_std_text
from sre2l_jax.student import data as student_data
from sre2l_jax.student import plans
from sre2l_jax.student.trainer import Run, Students

SRE2L = "sre2l"
BASELINES = ("real_soft", "real_hard", "synthetic_hard")
LABEL_MODES = ("online", "stored")
_SUBSET_TAG = 0x5EA1  # keeps the real-subset draw apart from other uses of the seed


def settings(config) -> dict:
    return stage_state.settings(config, "data", "student", "validate")


def real_subset(train_source, counts: np.ndarray, seed: int):
    """`counts[c]` random train images of each class c, drawn from the seed (a lazy view; the
    student pipeline fits them to image_size²: shorter side, then a centre crop, no squash)."""
    all_labels = sources.source_labels(train_source)
    rng = np.random.default_rng([seed, _SUBSET_TAG])
    chosen = []
    for c, k in enumerate(counts):
        pool = np.flatnonzero(all_labels == c)
        if len(pool) < k:
            raise ValueError(f"class {c} has {len(pool)} training images, fewer than the {k} the "
                             "real-subset baseline needs")
        chosen.extend(rng.choice(pool, int(k), replace=False).tolist())
    chosen = np.asarray(chosen, np.int64)
    return sources.IndexedSource(train_source, chosen, all_labels[chosen], train_source.class_names)


def baseline_mosaics(config, train_source, counts: np.ndarray, seed: int):
    """The real baselines' images as stored: the random subset of `counts` images per class, under
    `student.multi_formation` = f stitched f² at a time and under `student.bit_depth` = b packed
    8 / b at a time (as the report shows them)."""
    st = config.student
    return mosaics.stitched(real_subset(train_source, counts, seed), st.multi_formation,
                            config.data.image_size, st.bit_depth)


def baseline_images(config, train_source, counts: np.ndarray, seed: int):
    """The real baselines' student set: `baseline_mosaics` decoded as the synthetic set is."""
    return mosaics.decoded(baseline_mosaics(config, train_source, counts, seed),
                           config.student.multi_formation, config.data.image_size,
                           config.student.bit_depth)


def _check(v) -> None:
    if v.labels not in LABEL_MODES:
        raise ValueError(f"validate.labels must be one of {LABEL_MODES}, got {v.labels!r}")
    unknown = [b for b in v.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown validate.baselines {unknown}; known: {BASELINES}")
    if not v.seeds:
        raise ValueError("validate.seeds is empty")
    if v.full_data not in ("teacher", "none"):
        raise ValueError(f"validate.full_data must be 'teacher' or 'none', got {v.full_data!r}")


def _runs(config, synthetic, synthetic_hash: str, stored: StoredLabels | None) -> list[Run]:
    """Every (entry, seed) of the stage, baselines after the SRe²L run of each seed."""
    v = config.validate
    counts = np.bincount(sources.source_labels(synthetic), minlength=config.data.num_classes)
    train_source = None
    runs: list[Run] = []
    for seed in v.seeds:
        runs.append(Run(SRE2L, seed, synthetic, synthetic_hash, soft=True, stored=stored))
        for name in v.baselines:
            if name == "synthetic_hard":
                runs.append(Run(name, seed, synthetic, synthetic_hash, soft=False))
                continue
            if train_source is None:
                train_source = splits.build_source(config.data, config.data.train_split)
            subset = baseline_images(config, train_source, counts, seed)
            runs.append(Run(name, seed, subset, student_data.fingerprint(subset), soft=name == "real_soft"))
    return runs


def prepare(config, workdir: str, keep: Callable[[Run], bool] = lambda run: True) -> tuple:
    """(teacher, synthetic set, students, the runs `keep` accepts) of the stage; runs of other
    settings refuse here, before any evaluation or log is opened."""
    v = config.validate
    _check(v)
    model = teachers.load(config, workdir)
    synthetic = image_files.load_synthetic(config, workdir, model.meta)
    synthetic_hash = student_data.fingerprint(synthetic)
    stored = None
    if v.labels == "stored":
        stored = StoredLabels(os.path.join(workdir, "relabel"), plans.AugSpec.from_config(config),
                              synthetic_hash, model.fingerprint())
    # Whether targets hold top-k labels is the stored files' fact (their meta), not the config's.
    students = Students(config, workdir, model, len(synthetic), bool(stored and stored.top_k))
    runs = [one for one in _runs(config, synthetic, synthetic_hash, stored) if keep(one)]
    for one in runs:
        students.claim(one).check()
    return model, synthetic, students, runs


def run(config, workdir: str) -> dict:
    """Train and evaluate every (entry, seed); writes `W/validate/summary.json` and returns it."""
    v = config.validate
    t0 = time.time()
    model, synthetic, students, runs = prepare(config, workdir)
    teacher_eval = students.evaluate(model.ensemble, model.variables)
    results = students.train_logged(runs)
    counts = np.bincount(sources.source_labels(synthetic), minlength=config.data.num_classes)
    summary = _summary(config, results, counts, teacher_eval, model.paths[0])
    # The full-data model is the (first) teacher itself, not an ensemble of several.
    first = teacher_eval if len(model.models) == 1 else students.evaluate(model.models[0],
                                                                         model.variables[0])
    summary["dd_ranking"] = _dd_ranking(config, summary, first, model.meta)
    summary["seconds_this_run"] = time.time() - t0
    if jax.process_index() == 0:
        stage_state.write_json_atomic(os.path.join(students.stage_dir, "summary.json"), summary)
    n = len(v.seeds)
    line = " | ".join(f"{name} {mean_std_text(s['top1'], s['top1_std'], n)}" for name, s in
                      [(SRE2L, summary)] + [(b, summary[b]) for b in v.baselines])
    print(f"validate: top-1 (%) {line} | teacher {teacher_eval['top1']:.2f}", flush=True)
    logging.info("validate: %s", summary)
    return summary


def _dd_ranking(config, summary: dict, teacher_eval: dict, teacher_meta: dict) -> dict | None:
    """DD-Ranking's HLR / IOR / LRS from this stage's runs (identical recipe for every entry).

    The full-data hard-label accuracy is the teacher's when the student is the teacher's
    architecture (the teacher *is* that model: hard labels, the whole train split), per
    `validate.full_data`; otherwise HLR and LRS are left out and the summary says why.
    """
    if "real_soft" not in summary:
        return None
    st = config.student
    same_model = (st.arch, st.width) == (teacher_meta["arch"], teacher_meta["width"])
    full = teacher_eval["top1"] if config.validate.full_data == "teacher" and same_model else None
    hard = summary["synthetic_hard"]["top1"] if "synthetic_hard" in summary else None
    out = ddranking.metrics(summary["top1"], summary["real_soft"]["top1"], hard, full)
    if "hlr" not in out:
        out["hlr_missing"] = ("needs the synthetic_hard baseline and a full-data model of the "
                              "student's architecture (validate.full_data='teacher' and a student "
                              "with the teacher's arch and width)")
    return out


def _entry_summary(results: list[dict]) -> dict:
    top1, top1_std = mean_std([r["top1"] for r in results])
    top5, top5_std = mean_std([r["top5"] for r in results])
    per_class = np.mean([[np.nan if a is None else a for a in r["per_class_top1"]] for r in results], 0)
    out = {"top1": top1, "top1_std": top1_std, "top5": top5, "top5_std": top5_std,
           "per_class_top1": [None if np.isnan(a) else float(a) for a in per_class],
           "per_seed": [{k: r[k] for k in ("seed", "top1", "top5", "holdout_top1") if k in r}
                        for r in results]}
    if all("holdout_top1" in r for r in results):
        out["holdout_top1"], out["holdout_top1_std"] = mean_std([r["holdout_top1"] for r in results])
    return out


def _summary(config, results: dict, counts: np.ndarray, teacher_eval: dict, teacher_path: str) -> dict:
    v, st = config.validate, config.student
    ipc = int(counts[0]) if np.all(counts == counts[0]) else counts.tolist()
    summary = {**_entry_summary(results[SRE2L]), "ipc": ipc, "num_images": int(counts.sum()),
               "student": st.arch, "student_width": st.width, "labels": v.labels,
               "epochs": st.epochs, "seeds": list(v.seeds), "teacher": teacher_path,
               "teacher_top1": float(teacher_eval["top1"]),
               "teacher_top5": float(teacher_eval["top5"]),
               "baselines": list(v.baselines)}
    for name in v.baselines:
        summary[name] = _entry_summary(results[name])
    return summary
