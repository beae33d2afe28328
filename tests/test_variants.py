"""Beyond the paper: CDA crop schedule, real-image init, multi-teacher recovery and ensemble labels."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TINY,
    assert_same_images,
    hparams,
    idx_config,
    randomized_teacher,
    read_floats,
    tiny_config,
    write_idx_dataset,
    write_synthetic,
)

from sre2l_jax import augment, checkpoint, recover, relabel, teachers, validate
from sre2l_jax.data import sources, splits
from sre2l_jax.formats import labels as label_files
from sre2l_jax.recover import objective, rded, real_init
from sre2l_jax.stage_state import write_json_atomic


def test_crop_schedule_values():
    lo, hi = 0.08, 1.0
    at = lambda sched, t, m=1.0: float(objective.crop_min_scale(
        hparams(iterations=100, crop=True, crop_schedule=sched, crop_milestone=m), t))
    assert [at("constant", t) for t in (0, 50, 99)] == pytest.approx([lo] * 3)
    assert [at("linear", t) for t in (0, 25, 50, 100)] == pytest.approx(
        [hi, lo + (hi - lo) * 0.75, lo + (hi - lo) * 0.5, lo])
    assert at("cosine", 25) == pytest.approx(lo + (hi - lo) * (1 + np.cos(np.pi / 4)) / 2)
    assert at("cosine", 0) == pytest.approx(hi) and at("cosine", 50) == pytest.approx((lo + hi) / 2)
    assert [at("step", t, 0.3) for t in (0, 29, 30, 99)] == pytest.approx([hi, hi, lo, lo])
    assert [at("linear", t, 0.5) for t in (25, 50, 80)] == pytest.approx([(lo + hi) / 2, lo, lo])
    # At the start of the curriculum the crop is the whole image: the easy end of easy → hard.
    for i in range(5):
        box = augment.rrc_box(jax.random.key(i), 12, 12, (jnp.float32(1.0), 1.0))
        assert box.tolist() == [0, 0, 12, 12]
    # Iterations run with a schedule, inside the jitted loop.
    model, variables = randomized_teacher()
    hp = hparams(iterations=4, crop=True, crop_schedule="cosine")
    x = objective.init_images(0, jnp.arange(4), jnp.zeros(4, jnp.int32), (12, 12, 1))
    out, _, m = objective.run_iterations(x, objective.optimizer(hp).init(x), jnp.arange(4),
                                         jax.random.key(0), 0, 4, models=(model,),
                                         variables=(variables,), hp=hp)
    assert np.isfinite(float(m["loss"])) and not np.allclose(out, x)


def test_crop_schedule_errors():
    c = tiny_config()
    c.recover.crop, c.recover.crop_schedule = False, "cosine"
    with pytest.raises(ValueError, match="needs recover.crop=True"):
        objective.RecoverHParams.from_config(c)
    c.recover.crop, c.recover.crop_schedule = True, "exponential"
    with pytest.raises(ValueError, match="unknown recover.crop_schedule"):
        objective.RecoverHParams.from_config(c)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """4 classes × 10 train images (28², resized to the tiny 12²), labels c = i mod 4."""
    return write_idx_dataset(tmp_path_factory.mktemp("variants_idx"), 40, 8, 28, seed=3)


@pytest.mark.parametrize("mode", ["real_random", "real_medium", "real_mosaic", "rded"])
def test_real_init_draws_only_from_the_slots_own_class(data_dir, tiny_teacher, mode):
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path, init=mode, init_pool=8)
    labels = sources.source_labels(splits.build_source(c.data, "train"))
    slots = [(cl, k) for cl in range(4) for k in range(4)]
    start = real_init.start_images(c, model, variables, slots)
    for (cl, k), src in start.sources.items():
        assert len(src) == (4 if mode == "real_mosaic" else 1)
        assert all(labels[i] == cl for i in src), (cl, k, src, labels[src])
        assert start.image((cl, k)).shape == (12, 12, 1)
    # Different slots of a class start from different images.
    assert len({tuple(start.sources[(0, k)]) for k in range(4)}) == 4
    # A slot's choice does not depend on which other slots are being run (ranges, resumes).
    alone = real_init.start_images(c, model, variables, [(2, 3)])
    assert alone.sources[(2, 3)] == start.sources[(2, 3)]
    np.testing.assert_array_equal(alone.image((2, 3)), start.image((2, 3)))
    if mode == "rded":  # the start images are RDED's own output images, in its order
        picks = rded.Selector(c, model, variables).class_images(3, 4)
        for k in range(4):
            np.testing.assert_array_equal(start.image((3, k)), start.normalize(picks[k]["image"]))
    if mode == "real_random":  # the start image is that train image, normalized
        raw = sources.load_arrays(splits.build_source(c.data, "train"), 12)[0][start.sources[(1, 0)][0]]
        np.testing.assert_allclose(start.image((1, 0)), (raw / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_medium_picks_take_the_middle_of_the_confidence_order():
    conf = np.asarray([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.95, 0.6])
    assert sorted(conf[real_init.medium_picks(conf, 2)].tolist()) == [0.5, 0.6]


def test_real_init_recovery_is_device_invariant_and_records_sources(tmp_path, data_dir, tiny_teacher):
    floats = {}
    for n in (1, 2):
        c = idx_config(data_dir, tiny_teacher[2], init="real_random")
        c.num_devices = n
        recover.run(c, str(tmp_path / f"d{n}"))
        floats[n] = read_floats(tmp_path / f"d{n}")
    assert_same_images(floats[1], floats[2])
    labels = sources.source_labels(splits.build_source(c.data, "train"))
    entries = json.load(open(tmp_path / "d1" / "recover" / "manifest.json"))["images"]
    assert len(entries) == 16 and all(labels[e["init_sources"][0]] == e["class"] for e in entries)


def test_teacher_cycle_is_deterministic_t_mod_n(tiny_teacher):
    """Three iterations with teachers (A, B) = A at t=0, B at t=1, A at t=2, run one at a time."""
    model, va, _ = tiny_teacher
    _, vb = randomized_teacher(1)
    assert [objective.teacher_index(t, 3) for t in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    hp = hparams(iterations=3, jitter=(-2, 2), flip=True)
    x = objective.init_images(0, jnp.arange(4), jnp.zeros(4, jnp.int32), (12, 12, 1))
    labels, key, tx = jnp.arange(4), jax.random.key(5), objective.optimizer(hp)
    cycled, _, _ = objective.run_iterations(x, tx.init(x), labels, key, 0, 3, models=(model, model),
                                            variables=(va, vb), hp=hp)
    xs, state = x, tx.init(x)
    for t, v in enumerate((va, vb, va)):
        xs, state, _ = objective.run_iterations(xs, state, labels, key, t, t + 1, models=(model,),
                                                variables=(v,), hp=hp)
    np.testing.assert_allclose(cycled, xs, atol=1e-5)
    single, _, _ = objective.run_iterations(x, tx.init(x), labels, key, 0, 3, models=(model,),
                                            variables=(va,), hp=hp)
    assert not np.allclose(single, cycled, atol=1e-3)  # B really took part


@pytest.fixture(scope="module")
def second_teacher(tmp_path_factory):
    _, variables = randomized_teacher(1)
    path = str(tmp_path_factory.mktemp("teacher_b") / "model")
    checkpoint.save_model(path, variables, {**TINY, "class_names": ["a", "b", "c", "d"], "top1": None,
                                            "source": "test"})
    return path


def test_multi_teacher_recovery_and_ensemble_labels(tmp_path, data_dir, tiny_teacher, second_teacher):
    model, va, path_a = tiny_teacher
    floats = {}
    for n in (1, 2):
        c = idx_config(data_dir, path_a, extra_teachers=(second_teacher,))
        c.num_devices = n
        recover.run(c, str(tmp_path / f"m{n}"))
        floats[n] = read_floats(tmp_path / f"m{n}")
    assert_same_images(floats[1], floats[2])

    # Soft labels come from the ensemble: mean logits of both teachers.
    both = teachers.load(c, str(tmp_path))
    ens, ens_vars = both.ensemble, both.variables
    assert len(ens.members) == len(ens_vars) == 2 and both.meta["num_classes"] == 4
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12, 12, 1)), jnp.float32)
    _, vb = randomized_teacher(1)
    expected = (model.apply(va, x, train=False) + model.apply(vb, x, train=False)) / 2
    np.testing.assert_allclose(ens.apply(ens_vars, x), expected, atol=1e-5)

    # Relabel end to end: an "ensemble" of A with itself stores A's labels, A with B does not.
    def stored_logits(name, extra):
        w = str(tmp_path / name)
        write_synthetic(w)
        cfg = idx_config(data_dir, path_a, extra_teachers=extra)
        cfg.student.epochs, cfg.student.batch_size, cfg.num_devices = 1, 8, 1
        relabel.run(cfg, w)
        return label_files.read_epoch(os.path.join(w, "relabel"), 0)["logits"]

    single = stored_logits("single", ())
    np.testing.assert_allclose(stored_logits("self", (path_a,)), single, atol=1e-3)
    assert not np.allclose(stored_logits("pair", (second_teacher,)), single, atol=1e-2)

    # Validate trains a student on the ensemble's soft labels and evaluates the ensemble teacher.
    cfg = idx_config(data_dir, path_a, extra_teachers=(second_teacher,))
    st = cfg.student
    st.arch, st.width, st.epochs, st.batch_size, st.eval_every_epochs = "_tiny", 4, 2, 8, 2
    cfg.validate.seeds, cfg.validate.baselines, cfg.num_devices = (0,), (), 1
    summary = validate.run(cfg, str(tmp_path / "pair"))
    assert np.isfinite(summary["top1"]) and 0 <= summary["teacher_top1"] <= 100


def test_variants_table_and_report_section(tmp_path):
    from sre2l_jax import report
    from sre2l_jax.experiments import variants

    rows = [{"name": "sre2l", "top1": 50.0, "top1_std": 1.5, "per_seed": [49.0, 51.0],
             "teacher_acc_on_images": 100.0},
            {"name": "(a) random real + soft labels", "top1": 60.0, "top1_std": 0.5,
             "per_seed": [60.5, 59.5], "teacher_acc_on_images": None}]
    c = tiny_config("all")
    table = variants.variants_table(c, rows)
    assert "| sre2l | 50.00 ± 1.50 | — | — | 49.00, 51.00 | 100.0 |" in table
    assert "| (a) random real + soft labels | 60.00 ± 0.50 | — | — | 60.50, 59.50 | — |" in table
    rows[0].update(holdout_top1=50.5, ior=-10.0)
    table = variants.variants_table(c, rows)
    assert "| sre2l | 50.00 ± 1.50 | 50.50 | -10.00 | 49.00, 51.00 | 100.0 |" in table
    os.makedirs(tmp_path / "variants")
    assert report._variants_section(str(tmp_path)) == ""
    write_json_atomic(str(tmp_path / "variants" / "results.json"), rows)
    section = report._variants_section(str(tmp_path))
    assert "50.00 ± 1.50" in section and "random real + soft labels" in section
    with pytest.raises(ValueError, match="unknown variants"):
        variants.run_variants(c, str(tmp_path), only=["nonsense"])


def test_only_runs_add_rows_to_the_earlier_table(tmp_path):
    from sre2l_jax.experiments import variants

    path = str(tmp_path / "results.json")
    row = lambda name, top1: {"name": name, "top1": top1, "top1_std": 0.0, "per_seed": [top1],
                              "teacher_acc_on_images": None}
    write_json_atomic(path, [row("sre2l", 50.0), row("cda", 30.0), row("real_init", 55.0)])
    merged = variants._merge_with_earlier(path, [row("sre2l", 51.0), row("real_init_100it", 60.0),
                                                 row("real_init", 56.0)])
    assert [(r["name"], r["top1"]) for r in merged] == [
        ("sre2l", 51.0), ("cda", 30.0), ("real_init", 56.0), ("real_init_100it", 60.0)]


def test_backbones_and_second_teacher_are_their_own_models(tmp_path, monkeypatch):
    """The extra teachers are the models trained for them, not the main teacher again (by the time
    they are trained, run_variants has set recover.teacher to the main teacher's path)."""
    from sre2l_jax.experiments import variants

    trained = []
    monkeypatch.setattr(variants.stages, "run_once", lambda c, sub, stage: trained.append((sub, stage)))
    c = tiny_config(teacher="/elsewhere/main_teacher/model")
    backbones = variants.backbone_teachers(c, str(tmp_path))
    second = variants.second_teacher(c, str(tmp_path))
    subs = [sub for sub, _ in trained]
    assert backbones == [os.path.join(sub, "squeeze", "model") for sub in subs[:-1]]
    assert second == os.path.join(subs[-1], "squeeze", "model")
    assert len({*backbones, second, c.recover.teacher}) == len(backbones) + 2


def test_ensemble_labelled_variants_are_ranked_against_random_under_the_same_labels(tmp_path,
                                                                                    monkeypatch):
    """EDC's IOR is against the random subset under EDC's ensemble labels (trained once per teacher
    list, shared by the variants with the same backbones), RDED's against the teacher-labelled one,
    RDED with multi-formation's (bit planes') against the random subset in the same format (at a
    quarter (half) of the epochs: IDC's same compute)."""
    from sre2l_jax.experiments import variants

    def validate_summary(top1, baselines):
        out = {"top1": top1, "top1_std": 0.0, "per_seed": [{"top1": top1}]}
        return out | {b: {"top1": {"real_soft": 70.0, "real_hard": 60.0, "synthetic_hard": 20.0}[b]
                          + (5.0 if top1 > 80 else 0.0), "per_seed": []} for b in baselines}

    requested = {}

    def run_once(c, sub, stage):
        name = os.path.basename(sub)
        if stage == "validate":
            requested[name] = (tuple(c.validate.baselines), c.student.multi_formation,
                               c.student.bit_depth, c.student.epochs)
            return validate_summary({"rded": 72.0, "edc": 81.0, "rded_ensemble": 82.0, "rded_mf": 90.0,
                                     "rded_b4": 88.0}[name], c.validate.baselines)
        return {"teacher_accuracy": 100.0}

    c = tiny_config("all")
    monkeypatch.setattr(variants.stages, "run_all", lambda c, w: {
        "validate": validate_summary(50.0, c.validate.baselines), "recover": {"teacher_accuracy": 99.0}})
    monkeypatch.setattr(variants.stages, "run_once", run_once)
    monkeypatch.setattr(variants, "backbone_teachers", lambda c, w: ["/b0/model", "/b1/model"])
    monkeypatch.setattr(variants.report, "synthetic_arrays", lambda sub: (None, None, None))
    monkeypatch.setattr(variants.report, "image_grid", lambda *a, **k: None)
    monkeypatch.setattr(variants.report, "write_report", lambda *a, **k: None)
    rows = {r["name"]: r for r in variants.run_variants(
        c, str(tmp_path), only=["rded", "edc", "rded_ensemble", "rded_mf", "rded_b4"])}
    e = c.student.epochs
    assert requested == {"rded": ((), 1, 8, e), "edc": (("real_soft",), 1, 8, e),
                         "rded_ensemble": ((), 1, 8, e), "rded_mf": (("real_soft",), 2, 8, e // 4),
                         "rded_b4": (("real_soft",), 1, 4, e // 2)}
    assert rows["rded_mf"]["ior"] == 90.0 - 75.0 and rows["rded_b4"]["ior"] == 88.0 - 75.0
    assert rows[variants.own_baseline_name("rded_b4", False, 1, 4)]["top1"] == 75.0
    assert rows[variants.own_baseline_name("rded_mf", False, 2)]["top1"] == 75.0
    ensemble_random = rows[variants.own_baseline_name("edc", True, 1)]
    assert ensemble_random["top1"] == 75.0 and ensemble_random["ior"] is None
    assert rows["sre2l"]["ior"] == -20.0 and rows["rded"]["ior"] == 2.0
    assert rows["edc"]["ior"] == 81.0 - 75.0 and rows["rded_ensemble"]["ior"] == 82.0 - 75.0
    table = open(tmp_path / "variants" / "table.md").read()
    assert table.index("edc's ensemble soft labels") < table.index("| edc |")
    assert table.index("| rded_ensemble |") < table.index("rded_mf's multi-formation (2×2)") < table.index(
        "| rded_mf |")


def test_skip_plain_trains_only_the_teacher_and_leaves_teacher_labelled_rows_without_ior(tmp_path,
                                                                                         monkeypatch):
    """`--skip_plain`: no plain students (run_all is never called), the teacher's squeeze runs, the
    teacher-labelled variant has no IOR, the ensemble-labelled one is ranked against its own subset."""
    from sre2l_jax.experiments import variants

    stages_run = []

    def run_once(c, sub, stage):
        stages_run.append((os.path.basename(sub), stage, tuple(c.validate.baselines)))
        if stage != "validate":
            return {"teacher_accuracy": 100.0}
        top1 = {"cda": 60.0, "edc": 81.0}[os.path.basename(sub)]
        out = {"top1": top1, "top1_std": 0.0, "per_seed": [{"top1": top1}]}
        return out | ({"real_soft": {"top1": 80.0, "per_seed": []}} if c.validate.baselines else {})

    def no_plain(*args):
        raise AssertionError("the plain run must not train")

    def no_report(*args, **kwargs):
        raise AssertionError("no plain run, so no report (it would need recover/manifest.json)")

    c = tiny_config("all")
    monkeypatch.setattr(variants.stages, "run_all", no_plain)
    monkeypatch.setattr(variants.stages, "run_once", run_once)
    monkeypatch.setattr(variants, "backbone_teachers", lambda c, w: ["/b0/model", "/b1/model"])
    monkeypatch.setattr(variants.report, "synthetic_arrays", lambda sub: (None, None, None))
    monkeypatch.setattr(variants.report, "image_grid", lambda *a, **k: None)
    monkeypatch.setattr(variants.report, "write_report", no_report)
    rows = {r["name"]: r for r in variants.run_variants(c, str(tmp_path), only=["cda", "edc"],
                                                        skip_plain=True)}
    assert stages_run[0][:2] == (os.path.basename(str(tmp_path)), "squeeze")
    assert ("cda", "validate", ()) in stages_run and ("edc", "validate", ("real_soft",)) in stages_run
    assert "sre2l" not in rows and rows["cda"]["ior"] is None and rows["edc"]["ior"] == 1.0
    assert "| cda | 60.00 (1 seed) | — | — |" in open(tmp_path / "variants" / "table.md").read()
