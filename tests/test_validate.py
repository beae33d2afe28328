"""Relabel + validate: losses by hand, the AdamW mask, stored = online, device counts, resume, errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, TESTS, compiles, start_processes, write_idx, write_synthetic
from PIL import Image

from sre2l_jax import checkpoint, optim, parallel, relabel, validate
from sre2l_jax.formats import labels as label_files
from sre2l_jax.models import create_model, init_variables
from sre2l_jax.student import losses, plans, trainer
from sre2l_jax.student import steps as student_steps
from sre2l_jax.student.steps import online_step

CONFIG_FILE = '''
import tiny_config  # tests/ is on sys.path: PYTHONPATH in the CLI, pytest's rootdir in-process


def get_config(arg=None):
    c = tiny_config.get_config(arg)
    c.unlock()
    c.data.source, c.data.dir, c.data.class_ids = "idx", {data_dir!r}, (0, 1, 2, 3)
    st = c.student
    st.arch, st.width, st.lr, st.epochs, st.batch_size, st.temperature = "_tiny", 4, 1e-2, 3, 12, 4.0
    st.eval_every_epochs = 2
    # Online runs round the teacher's logits through float16 as stored labels do, so the two
    # modes must agree to float32 reduction-order noise.
    st.teacher_logits_dtype = "float16"
    c.validate.checkpoint_every_epochs, c.validate.seeds, c.validate.baselines = 2, (0,), ()
    c.log_every_steps = 100
    return c.lock()
'''


def _numpy_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_kd_and_hard_losses_match_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 3, (5, 7)), rng.normal(0, 3, (5, 7))
    for tau, tau2 in ((1.0, False), (4.0, True), (20.0, False)):
        p, q = _numpy_softmax(t / tau), _numpy_softmax(s / tau)
        expected = np.sum(p * (np.log(p) - np.log(q))) / 5 * (tau**2 if tau2 else 1.0)
        got = float(losses.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), tau, tau2))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Top-k targets: filled classes get exactly zero mass, the rest is the renormalized top-k.
    arrays = {"topk_indices": np.argsort(-t, 1)[:, :3].astype(np.int16)}
    arrays["topk_values"] = np.take_along_axis(t, arrays["topk_indices"].astype(int), 1).astype(np.float16)
    full = label_files.full_logits(arrays, 7)
    assert np.sum(full == label_files.FILL_LOGIT) == 5 * 4
    p = np.zeros((5, 7))
    top = arrays["topk_values"].astype(np.float64) / 4.0
    np.put_along_axis(p, arrays["topk_indices"].astype(int), _numpy_softmax(top), 1)
    log_q = np.log(_numpy_softmax(s / 4.0))
    expected = np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0)) / 5
    got = float(losses.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(full), 4.0, False))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Hard labels mixed by λ with the partner permutation.
    labels, perm, lam = np.array([0, 1, 2, 3, 4]), np.array([2, 0, 1, 4, 3]), 0.3
    ce = -np.log(_numpy_softmax(s))
    expected = np.mean(lam * ce[np.arange(5), labels] + (1 - lam) * ce[np.arange(5), labels[perm]])
    got = float(losses.hard_loss(jnp.asarray(s, jnp.float32), jnp.asarray(labels),
                                  {"perm": jnp.asarray(perm), "lam": jnp.float32(lam)}))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Label smoothing ε: each target is (1 − ε)·one-hot + ε/7, mixed by λ as above.
    eps, logq = 0.1, np.log(_numpy_softmax(s))
    smooth = (1 - eps) * np.eye(7)[labels] + eps / 7
    expected = np.mean(-lam * np.sum(smooth * logq, 1) - (1 - lam) * np.sum(smooth[perm] * logq, 1))
    got = float(losses.hard_loss(jnp.asarray(s, jnp.float32), jnp.asarray(labels),
                                  {"perm": jnp.asarray(perm), "lam": jnp.float32(lam)}, eps))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_adamw_decays_conv_and_dense_kernels_only():
    model = create_model("_tiny", 4, width=4, stem="lowres")
    params = init_variables(model, jax.random.key(0), (12, 12, 1))["params"]
    mask = optim.kernel_mask(params)
    flat = {"/".join(str(k.key) for k in path): m
            for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["conv1/kernel"] and flat["fc/kernel"] and flat["layer2_0/downsample_conv/kernel"]
    assert not flat["fc/bias"] and not flat["bn1/scale"] and not flat["bn1/bias"]
    assert not flat["layer1_0/bn2/scale"]
    assert sum(flat.values()) == sum(1 for k in flat if k.endswith("kernel"))
    # And the optimizer acts on it: with zero gradients only kernels move (decoupled decay).
    tx = optim.make_optimizer("adamw", lambda _: 0.1, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for (path, p), n in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(new)):
        expected = p * (1 - 0.1 * 0.5) if p.ndim > 1 else p
        np.testing.assert_allclose(n, expected, rtol=1e-6, err_msg=str(path))


def test_mix_plans():
    spec = plans.AugSpec(12, (0.5,), (0.25,), mix="cutmix")
    plan = jax.jit(lambda k: plans.mix_plan(k, 8, spec))(jax.random.key(3))
    box = np.asarray(plan["box"])
    area = (box[2] - box[0]) * (box[3] - box[1])
    assert float(plan["lam"]) == pytest.approx(1 - area / 144) and sorted(plan["perm"]) == list(range(8))
    off = plans.mix_plan(jax.random.key(3), 8, plans.AugSpec(12, (0.5,), (0.25,), mix_prob=0.0))
    assert float(off["lam"]) == 1.0 and not np.any(off["box"])
    mixup = plans.mix_plan(jax.random.key(3), 8, plans.AugSpec(12, (0.5,), (0.25,), mix="mixup"))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 12, 12, 1)), jnp.float32)
    full = {"boxes": jnp.tile(jnp.array([0, 0, 12, 12]), (8, 1)), "flips": jnp.zeros(8, bool), **mixup}
    lam = float(mixup["lam"])
    np.testing.assert_allclose(plans.apply_plan(x, full, plans.AugSpec(12, (0.5,), (0.25,), mix="mixup")),
                               lam * x + (1 - lam) * x[np.asarray(mixup["perm"])], atol=1e-5)


# ---------------------------------------------------------------- end to end on a tiny set

def _load_config(path, teacher, **edits):
    spec = importlib.util.spec_from_file_location("validate_test_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"validate,teacher={teacher}")
    c.unlock()
    for key, value in edits.items():
        if "__" in key:
            section, name = key.split("__")
            c[section][name] = value
        else:
            c[key] = value
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_teacher):
    """A tiny IDX data set (4 classes, 12×12), 16 synthetic PNGs and the config file using them."""
    root = tmp_path_factory.mktemp("validate")
    rng = np.random.default_rng(1)
    os.makedirs(root / "idx")
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(str(root / "idx" / f"{prefix}-images-idx3-ubyte"),
                  rng.integers(0, 256, (n, 12, 12), dtype=np.uint8))
        write_idx(str(root / "idx" / f"{prefix}-labels-idx1-ubyte"), (np.arange(n) % 4).astype(np.uint8))
    write_synthetic(str(root / "synthetic"))
    config_path = root / "validate_config.py"
    config_path.write_text(CONFIG_FILE.format(data_dir=str(root / "idx")))
    config = lambda **edits: _load_config(str(config_path), tiny_teacher[2], **edits)
    return {"root": root, "config": config, "config_path": str(config_path), "teacher": tiny_teacher[2]}


def _workdir(env, name):
    w = env["root"] / name
    shutil.copytree(env["root"] / "synthetic", w)
    return str(w)


def _run_dir(workdir, entry="sre2l", seed=0, stored=False):
    return os.path.join(workdir, "validate", "runs", trainer.run_name(entry, seed, stored))


def _student_params(workdir, entry="sre2l", seed=0, stored=False):
    return checkpoint.load_model(os.path.join(_run_dir(workdir, entry, seed, stored), "model"))[0]


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def runs(env):
    """Online on 1 device (with baselines, 2 seeds), online on 4, relabel, stored on 4."""
    one, four, stored = _workdir(env, "one"), _workdir(env, "four"), _workdir(env, "stored")
    out = {"one": one, "four": four, "stored": stored}
    c = env["config"](validate__seeds=(0, 1), validate__baselines=validate.BASELINES, num_devices=1)
    out["summary_one"] = validate.run(c, one)
    out["summary_four"] = validate.run(env["config"](num_devices=4), four)
    out["relabel"] = relabel.run(env["config"](num_devices=4), stored)
    out["summary_stored"] = validate.run(env["config"](validate__labels="stored", num_devices=4), stored)
    return out


def test_device_count_does_not_change_the_student(runs):
    assert _max_diff(_student_params(runs["one"]), _student_params(runs["four"])) < 2e-5
    assert runs["summary_one"]["per_seed"][0] == runs["summary_four"]["per_seed"][0]
    # Different seeds give different students, so the comparison above could fail.
    assert _max_diff(_student_params(runs["one"], seed=0), _student_params(runs["one"], seed=1)) > 1e-2


def test_students_on_lanes_equal_students_trained_alone(env):
    """Batch 5 cannot be split over the devices: each device trains its own student, two at once
    on two devices, and every student equals the one trained alone on one device."""
    assert [m.devices.size for m in parallel.lane_meshes(4, batch=5)] == [1, 1, 1, 1]
    assert [m.devices.size for m in parallel.lane_meshes(4, batch=12)] == [4]
    assert parallel.make_mesh(4, jobs=3).devices.size == 3
    edits = {"student__batch_size": 5, "validate__seeds": (0, 1), "validate__baselines": ("real_soft",)}
    lanes, alone = _workdir(env, "lanes"), _workdir(env, "alone")
    on_lanes = validate.run(env["config"](num_devices=2, **edits), lanes)
    by_itself = validate.run(env["config"](num_devices=1, **edits), alone)
    assert on_lanes["per_seed"] == by_itself["per_seed"]
    assert on_lanes["real_soft"]["per_seed"] == by_itself["real_soft"]["per_seed"]
    for entry in ("sre2l", "real_soft"):
        for seed in (0, 1):
            assert _max_diff(_student_params(lanes, entry, seed), _student_params(alone, entry, seed)) == 0
    steps = [r["step"] for r in map(json.loads, open(os.path.join(lanes, "validate", "metrics.jsonl")))]
    assert steps == sorted(steps) and steps[-1] == 4 * 3 * 4  # 4 runs × 3 epochs × 4 batches


def test_lanes_compile_their_step_before_training(env, monkeypatch):
    """`Steps.compile_online` compiles the very program the first step calls: the step function
    is traced once (an argument whose sharding or axis types differed would trace it again)."""
    traced = []

    def counting_step(*args, **kwargs):
        traced.append(1)
        return online_step(*args, **kwargs)

    monkeypatch.setattr(student_steps, "online_step", counting_step)
    validate.run(env["config"](num_devices=1, student__batch_size=8), _workdir(env, "compiled"))
    assert len(traced) == 1


def test_relabel_on_lanes_equals_one_device(env):
    """Epochs label two at a time on two devices (batch 5 does not split) with the same files,
    bit for bit, as on one device; 3 epochs: one pair and one left over."""
    edits = {"student__batch_size": 5}
    lanes, alone = _workdir(env, "relabel_lanes"), _workdir(env, "relabel_alone")
    relabel.run(env["config"](num_devices=2, **edits), lanes)
    relabel.run(env["config"](num_devices=1, **edits), alone)
    for epoch in range(3):
        on_lanes = label_files.read_epoch(os.path.join(lanes, "relabel"), epoch)
        by_itself = label_files.read_epoch(os.path.join(alone, "relabel"), epoch)
        assert sorted(on_lanes) == sorted(by_itself)
        for key in on_lanes:
            np.testing.assert_array_equal(on_lanes[key], by_itself[key])
    first = label_files.read_epoch(os.path.join(alone, "relabel"), 0)["logits"]
    assert not np.array_equal(first, label_files.read_epoch(os.path.join(alone, "relabel"), 1)["logits"])


def test_stored_labels_reproduce_online_training(runs):
    assert _max_diff(_student_params(runs["four"]), _student_params(runs["stored"], stored=True)) < 2e-5
    assert runs["summary_stored"]["top1"] == runs["summary_four"]["top1"]
    assert runs["summary_stored"]["top5"] == runs["summary_four"]["top5"]
    four = json.load(open(os.path.join(_run_dir(runs["four"]), "result.json")))
    stored = json.load(open(os.path.join(_run_dir(runs["stored"], stored=True), "result.json")))
    assert [h["epoch"] for h in four["history"]] == [2, 3] and four["history"] == stored["history"]


def test_relabel_writes_its_tensorboard_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(runs["stored"], "tensorboard", "relabel"))
    acc.Reload()
    assert "relabel/batches" in acc.Tags()["scalars"] and len(acc.Scalars("relabel/batches")) >= 1


def test_stored_labels_reproduce_online_training_with_randaugment(env, runs):
    online, stored = _workdir(env, "ra_online"), _workdir(env, "ra_stored")
    config = lambda **kw: env["config"](student__randaugment=2, num_devices=4, **kw)
    summary_online = validate.run(config(), online)
    relabel.run(config(), stored)
    z = label_files.read_epoch(os.path.join(stored, "relabel"), 0)
    assert z["ra_ops"].shape == (16, 2) and z["ra_signs"].dtype == bool
    summary_stored = validate.run(config(validate__labels="stored"), stored)
    assert _max_diff(_student_params(online), _student_params(stored, stored=True)) < 2e-5
    assert summary_stored["top1"] == summary_online["top1"]
    # RandAugment did change the student's inputs: not the student without it.
    assert _max_diff(_student_params(online), _student_params(runs["four"])) > 1e-3


def test_relabel_files(runs, env):
    d = os.path.join(runs["stored"], "relabel")
    assert sorted(f for f in os.listdir(d) if f.endswith(".npz")) == [
        "epoch_00000.npz", "epoch_00001.npz", "epoch_00002.npz"]
    z = label_files.read_epoch(d, 1)
    assert z["logits"].dtype == np.float16 and z["logits"].shape == (16, 4)
    assert sorted(z["order"]) == list(range(16)) and z["boxes"].shape == (16, 4)
    assert z["mix_lambda"].shape == (2,) and z["mix_box"].shape == (2, 4)  # batches of 12 and 4
    assert sorted(z["mix_perm"][:12]) == list(range(12)) and sorted(z["mix_perm"][12:]) == list(range(4))
    np.testing.assert_array_equal(z["order"], plans.epoch_order(0, 1, 16))
    meta = json.load(open(os.path.join(d, "meta.json")))
    assert meta["complete"] and meta["temperature"] == 4.0 and meta["plan"]["batch_size"] == 12
    assert meta["storage_bytes"] == sum(os.path.getsize(os.path.join(d, f"epoch_0000{e}.npz"))
                                        for e in range(3)) == runs["relabel"]["storage_bytes"]
    # A restart keeps the finished epochs and rewrites nothing.
    mtime = os.path.getmtime(os.path.join(d, "epoch_00000.npz"))
    relabel.run(env["config"](num_devices=4), runs["stored"])
    assert os.path.getmtime(os.path.join(d, "epoch_00000.npz")) == mtime


def test_topk_labels_are_stored_and_used(env, runs):
    w = _workdir(env, "topk")
    c = env["config"](relabel__top_k=2, num_devices=4)  # the fixture's shapes: nothing to compile
    relabel.run(c, w)
    z = label_files.read_epoch(os.path.join(w, "relabel"), 0)
    full = label_files.read_epoch(os.path.join(runs["stored"], "relabel"), 0)["logits"]
    assert "logits" not in z and z["topk_values"].shape == (16, 2)
    np.testing.assert_array_equal(np.sort(z["topk_values"], 1), np.sort(full, 1)[:, 2:])
    c.validate.labels = "stored"
    assert np.isfinite(validate.run(c, w)["top1"])
    # EDC's MSE+CE loss on the same top-k files, with a config that no longer says top_k: the
    # files' meta decides how unstored classes are treated (a −1e9 target would give loss ~1e17).
    mse = str(env["root"] / "topk_mse")
    shutil.copytree(w, mse, ignore=shutil.ignore_patterns("validate"))
    validate.run(env["config"](student__loss="mse_ce", validate__labels="stored", num_devices=4), mse)
    with open(os.path.join(mse, "validate", "metrics.jsonl")) as f:
        logged = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert logged and max(logged) < 1e3


def test_summary(runs):
    s = runs["summary_one"]
    assert s["seeds"] == [0, 1] and s["ipc"] == 4 and s["student"] == "_tiny"
    assert [p["seed"] for p in s["per_seed"]] == [0, 1]
    assert s["top1"] == pytest.approx(np.mean([p["top1"] for p in s["per_seed"]]))
    assert s["top1_std"] == pytest.approx(np.std([p["top1"] for p in s["per_seed"]], ddof=1))
    assert 0 <= s["teacher_top1"] <= 100 and s["top5"] >= s["top1"]
    for name in validate.BASELINES:
        assert set(s[name]) >= {"top1", "top1_std", "top5", "top5_std", "per_seed"}
        assert len(s[name]["per_seed"]) == 2
    on_disk = json.load(open(os.path.join(runs["one"], "validate", "summary.json")))
    assert on_disk["top1"] == s["top1"] and on_disk["real_soft"] == s["real_soft"]
    assert os.path.getsize(os.path.join(runs["one"], "validate", "metrics.jsonl")) > 0


def test_real_subset_matches_ipc_per_class(env):
    c = env["config"]()
    from sre2l_jax.data import sources, splits
    src = splits.build_source(c.data, c.data.train_split)
    subset = validate.real_subset(src, np.array([4, 4, 4, 4]), 0)
    labels = sources.source_labels(subset)
    assert len(subset) == 16 and np.bincount(labels).tolist() == [4, 4, 4, 4]
    assert all(np.asarray(src.labels)[subset.indices] == labels)
    again = validate.real_subset(src, np.array([4, 4, 4, 4]), 0)
    other = validate.real_subset(src, np.array([4, 4, 4, 4]), 1)
    assert np.array_equal(subset.indices, again.indices) and not np.array_equal(subset.indices, other.indices)


def _cli(env, workdir, env_extra=None):
    # The subprocess inherits conftest's XLA_FLAGS (4 devices) and uses the same compile cache,
    # so it runs the very executables the in-process 4-device run compiled.
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS]),
               "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
               **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "sre2l_jax.main",
         f"--config={env['config_path']}:validate,teacher={env['teacher']}",
         "--config.validate.checkpoint_every_epochs=1", f"--workdir={workdir}"],
        env=environ, capture_output=True, text=True, timeout=300)


def test_kill_and_resume_gives_the_same_student(env, runs):
    run_dir = _workdir(env, "cli_run")
    killed = _cli(env, run_dir, {"SRE2L_FAULT_KILL_AFTER_SAVES": "2"})  # saves after epochs 1, 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(run_dir, "validate", "summary.json"))
    resumed = _cli(env, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed sre2l seed 0 at epoch 2" in resumed.stdout
    # The reference is the uninterrupted in-process run with the same config on 4 devices.
    ref = runs["summary_four"]
    got = json.load(open(os.path.join(run_dir, "validate", "summary.json")))
    assert (ref["top1"], ref["top5"]) == (got["top1"], got["top5"])
    assert _max_diff(_student_params(runs["four"]), _student_params(run_dir)) < 1e-6


def test_clear_errors(env, runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic images"):
        validate.run(env["config"](), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="has 4 classes but the data has 5"):
        validate.run(env["config"](data__num_classes=5), runs["one"])
    with pytest.raises(ValueError, match="unknown validate.baselines"):
        validate.run(env["config"](validate__baselines=("real",)), runs["one"])
    with pytest.raises(FileNotFoundError, match="run the relabel stage first"):
        validate.run(env["config"](validate__labels="stored"), runs["one"])
    with pytest.raises(ValueError, match="batch_size"):
        validate.run(env["config"](validate__labels="stored", student__batch_size=8), runs["stored"])
    with pytest.raises(ValueError, match="epochs: 3 -> 5"):
        validate.run(env["config"](validate__labels="stored", student__epochs=5), runs["stored"])
    with pytest.raises(ValueError, match="holds a student run made with other settings.*lr: 0.01 -> 0.5"):
        validate.run(env["config"](student__lr=0.5, num_devices=4), runs["four"])
    with pytest.raises(ValueError, match="holds stored labels made with other settings.*mix: cutmix -> none"):
        relabel.run(env["config"](student__mix="none", num_devices=4), runs["stored"])
    # Images outside recover's layout: folders come from the teacher's class names.
    changed = str(tmp_path / "changed")
    shutil.copytree(os.path.join(runs["stored"], "recover", "images"), changed)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(os.path.join(changed, "a", "000.png"))
    with pytest.raises(ValueError, match="other synthetic images"):
        validate.run(env["config"](validate__labels="stored", relabel__images=changed),
                          runs["stored"])
    os.makedirs(os.path.join(changed, "e"))
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(os.path.join(changed, "e", "000.png"))
    with pytest.raises(ValueError, match="not among"):
        validate.run(env["config"](relabel__images=changed), runs["one"])


def test_two_processes_match_one_device(env, runs):
    """2 processes × 2 simulated devices, joined by jax.distributed, train the 1-device student."""
    workdir = _workdir(env, "multi")
    procs = start_processes([sys.executable, os.path.join(TESTS, "run_validate_process.py"),
                             env["config_path"], workdir, TESTS, f"validate,teacher={env['teacher']}"])
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    for pid in range(2):
        with open(os.path.join(workdir, f"summary_{pid}.json")) as f:
            out = json.load(f)
        assert out["devices"] == 4 and out["local_devices"] == 2
        assert out["summary"]["per_seed"][0] == runs["summary_one"]["per_seed"][0]
    assert _max_diff(_student_params(runs["one"]), _student_params(workdir)) < 2e-5


def test_student_step_compiles_once_per_batch_shape(env):
    """2 seeds × (SRe²L + 2 baselines) = 6 students of 3 epochs: the step compiles once per batch
    shape (12 and the last 4 of 16 images), not per student, epoch or step."""
    c = env["config"](validate__seeds=(0, 1), validate__baselines=("real_soft", "real_hard"),
                      num_devices=1)
    seen = compiles(lambda: validate.run(c, _workdir(env, "compiles")))
    steps = [s for s in seen if "online_step" in s]
    assert 1 <= len(steps) <= 2, seen


def test_hard_label_keys_retrain_only_the_hard_label_students(env, runs):
    w = str(env["root"] / "smoothing")
    shutil.copytree(runs["one"], w)
    for entry in ("real_hard", "synthetic_hard"):
        shutil.rmtree(_run_dir(w, entry))
    soft = {e: os.path.getmtime(os.path.join(_run_dir(w, e), "result.json")) for e in ("sre2l", "real_soft")}
    hard_keys = {"student__hard_label_smoothing": 0.3, "student__hard_label_crop_scale": (0.5, 1.0)}
    config = env["config"](validate__seeds=(0,), validate__baselines=validate.BASELINES, num_devices=1,
                           **hard_keys)
    lane = validate.prepare(config, w)[2].lanes[0]
    assert lane.steps_for(False).recipe.spec.crop_scale == (0.5, 1.0)
    assert lane.steps_for(True).recipe.spec.crop_scale == (0.08, 1.0)
    validate.run(config, w)
    # The soft-label runs' claims leave the keys out: their results were kept, not retrained.
    assert {e: os.path.getmtime(os.path.join(_run_dir(w, e), "result.json")) for e in soft} == soft
    for entry in ("real_hard", "synthetic_hard"):  # retrained (smoothed targets, larger crops): other weights
        assert _max_diff(_student_params(w, entry), _student_params(runs["one"], entry)) > 1e-4
    with pytest.raises(ValueError, match=r"hard_label_smoothing must be in \[0, 1\), got 1.0"):
        validate.run(env["config"](student__hard_label_smoothing=1.0), w)
    # A finished hard-label run of other hard-label settings is refused, naming the key.
    with pytest.raises(ValueError, match="hard_label_smoothing: 0.3 -> 0.0"):
        validate.run(env["config"](validate__seeds=(0,), validate__baselines=validate.BASELINES,
                                   num_devices=1), w)


def test_hard_label_crop_scale_draws_only_crops_of_its_scale():
    spec = plans.AugSpec(image_size=28, mean=(0.0,), std=(1.0,), mix="none")
    assert plans.hard_label_spec(spec, ()) is spec
    images = jnp.zeros((256, 28, 28, 1), jnp.uint8)
    ids = jnp.asarray([0, 0, 0], jnp.int32)
    areas = {}
    for scale in ((0.08, 1.0), (0.5, 1.0)):
        _, plan = plans.augmented(images, ids, plans.hard_label_spec(spec, scale))
        areas[scale] = np.asarray(plan["boxes"][:, 2] * plan["boxes"][:, 3]) / 28**2
    assert areas[(0.08, 1.0)].min() < 0.3  # the default draws crops the (0.5, 1) scale may not
    assert areas[(0.5, 1.0)].min() > 0.45  # ≥ 0.5 up to rounding the box's sides to pixels
    for bad in ((0.0, 1.0), (0.6, 0.5), (0.5,)):
        with pytest.raises(ValueError, match="hard_label_crop_scale must be"):
            plans.hard_label_spec(spec, bad)
    with pytest.raises(ValueError, match="student.crop is 'pad_crop'"):
        plans.hard_label_spec(plans.AugSpec(image_size=28, mean=(0.0,), std=(1.0,), crop="pad_crop"),
                              (0.5, 1.0))
