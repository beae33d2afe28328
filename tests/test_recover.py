"""Recovery: the objective against an independent computation, placement invariance, resume, errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TESTS,
    assert_same_images,
    cli_env,
    compiles,
    hparams,
    numpy_forward_stats,
    pngs,
    read_floats,
    recover_floats,
    start_processes,
    tiny_config,
)

from sre2l_jax import checkpoint, recover
from sre2l_jax.models import apply_with_bn_stats
from sre2l_jax.recover import objective, plan


def test_bn_loss_and_gradient_match_independent_numpy(tiny_teacher):
    model, variables, _ = tiny_teacher
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 1))

    def numpy_bn_loss(xx):
        stats = numpy_forward_stats(variables, xx)
        return sum((10.0 if i == 0 else 1.0) * (np.linalg.norm(v - rv) + np.linalg.norm(m - rm))
                   for i, (m, v, rm, rv) in enumerate(stats))

    v32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    engine = lambda xx: objective.bn_matching_loss(
        apply_with_bn_stats(model, v32, xx)[1], 10.0)
    assert len(numpy_forward_stats(variables, x)) == len(apply_with_bn_stats(model, v32, x)[1]) == 6
    np.testing.assert_allclose(float(engine(jnp.asarray(x, jnp.float32))), numpy_bn_loss(x), rtol=1e-5)

    grad = np.asarray(jax.grad(engine)(jnp.asarray(x, jnp.float32)))
    rng = np.random.default_rng(1)
    for _ in range(6):  # central differences in float64 at random pixels
        idx = tuple(rng.integers(0, d) for d in x.shape)
        e = np.zeros_like(x)
        e[idx] = 1e-5
        fd = (numpy_bn_loss(x + e) - numpy_bn_loss(x - e)) / 2e-5
        np.testing.assert_allclose(grad[idx], fd, rtol=2e-3, atol=1e-4)


def test_bn_loss_is_plain_norm_not_squared():
    stats = [("bn1", {"mean": jnp.array([3.0, 4.0]), "var": jnp.array([1.0, 1.0]),
                      "running_mean": jnp.zeros(2), "running_var": jnp.ones(2)}),
             ("layer1_0/bn1", {"mean": jnp.zeros(2), "var": jnp.array([2.0, 1.0]),
                               "running_mean": jnp.zeros(2), "running_var": jnp.ones(2)})]
    # stem: 10 × (‖0‖ + ‖(3,4)‖) = 50; other: ‖(1,0)‖ = 1
    assert float(objective.bn_matching_loss(stats, 10.0)) == pytest.approx(51.0)


def test_adam_schedule_and_clip_follow_the_spec(tiny_teacher):
    model, variables, _ = tiny_teacher
    hp = hparams(iterations=4, lr=0.3)
    lr = objective.cosine_lr(hp)
    assert [float(lr(t)) for t in range(4)] == pytest.approx(
        [0.3, 0.5 * (1 + np.cos(np.pi / 4)) * 0.3, 0.15, 0.5 * (1 + np.cos(3 * np.pi / 4)) * 0.3])
    x = objective.init_images(0, jnp.arange(4), jnp.zeros(4, jnp.int32), (12, 12, 1))
    tx = objective.optimizer(hp)
    out, _, metrics = objective.run_iterations(
        x, tx.init(x), jnp.arange(4), jax.random.key(0), 0, 4, models=(model,), variables=(variables,),
        hp=hp)
    assert float(out.min()) >= -2.0 - 1e-6 and float(out.max()) <= 2.0 + 1e-6  # (0-.5)/.25, (1-.5)/.25
    assert np.isfinite(float(metrics["loss"]))


def test_batch_plan_sequential_and_classwise():
    seq = plan.plan_batches(num_classes=1000, ipc=2, batch_size=100)
    assert len(seq) == 20 and seq[0].classes == tuple(range(100)) and set(seq[0].ipcs) == {0}
    assert seq[10].classes == tuple(range(100)) and set(seq[10].ipcs) == {1}
    few = plan.plan_batches(num_classes=10, ipc=10, batch_size=100)
    assert len(few) == 1 and sorted(zip(few[0].classes, few[0].ipcs)) == [
        (c, k) for c in range(10) for k in range(10)]
    cw = plan.plan_batches(num_classes=4, ipc=50, batch_size=100, composition="classwise")
    assert len(cw) == 2 and cw[0].classes == (0,) * 50 + (1,) * 50
    with pytest.raises(ValueError, match="cuts batch"):
        plan.select_range(plan.plan_batches(10, 10, 20), (0, 1), (0, 10))


def test_images_do_not_depend_on_device_count_and_tree_is_written(tmp_path, tiny_teacher):
    ref = recover_floats(tmp_path / "d1", 1, tiny_teacher[2])
    for n in (2, 4):
        assert_same_images(ref, recover_floats(tmp_path / f"d{n}", n, tiny_teacher[2]))
    tree = sorted(os.listdir(tmp_path / "d1" / "recover" / "images"))
    assert tree == ["a", "b", "c", "d"]
    assert sorted(os.listdir(tmp_path / "d1" / "recover" / "images" / "a")) == [
        "000.npy", "000.png", "001.npy", "001.png", "002.npy", "002.png", "003.npy", "003.png"]
    manifest = json.load(open(tmp_path / "d1" / "recover" / "manifest.json"))
    assert len(manifest["images"]) == 16 and {"ce", "bn_loss", "teacher_pred"} <= set(manifest["images"][0])
    assert manifest["config"]["recover"]["iterations"] == 6
    # Different seeds are different images: the comparison above could fail.
    assert not np.allclose(ref[(0, 0)], ref[(0, 1)])


def test_range_split_reproduces_single_run(tmp_path, tiny_teacher):
    whole = recover_floats(tmp_path / "whole", 2, tiny_teacher[2])
    assert len(recover_floats(tmp_path / "split", 2, tiny_teacher[2], ipc_end=2)) == 8
    split = recover_floats(tmp_path / "split", 1, tiny_teacher[2], ipc_start=2)
    assert_same_images(whole, split)
    manifest = json.load(open(tmp_path / "split" / "recover" / "manifest.json"))
    assert len(manifest["images"]) == 16


def _cli(workdir, teacher, env_extra=None, iterations=12):
    return subprocess.run(
        [sys.executable, "-m", "sre2l_jax.main",
         f"--config={TESTS}/tiny_config.py:recover,teacher={teacher},iterations={iterations}",
         f"--workdir={workdir}"], env=cli_env(2, **(env_extra or {})), capture_output=True, text=True,
        timeout=300)


def test_kill_and_resume_gives_identical_images(tmp_path, tiny_teacher):
    ref = _cli(tmp_path / "ref", tiny_teacher[2])
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _cli(tmp_path / "run", tiny_teacher[2], {"SRE2L_FAULT_KILL_AFTER_SAVES": "2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "recover" / "manifest.json")
    resumed = _cli(tmp_path / "run", tiny_teacher[2])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed batches" in resumed.stdout
    ref_files = pngs(tmp_path / "ref" / "recover" / "images")
    assert len(ref_files) == 32 and pngs(tmp_path / "run" / "recover" / "images") == ref_files
    ref_m = json.load(open(tmp_path / "ref" / "recover" / "manifest.json"))["images"]
    run_m = json.load(open(tmp_path / "run" / "recover" / "manifest.json"))["images"]
    np.testing.assert_allclose([e["ce"] for e in ref_m], [e["ce"] for e in run_m], atol=1e-6)


def _two_processes(workdir, teacher, fault_pid=None):
    """Start recovery as 2 processes × 2 simulated devices joined by jax.distributed."""
    fault = lambda pid: {"SRE2L_FAULT_KILL_AFTER_SAVES": "2"} if pid == fault_pid else {}
    return start_processes([sys.executable, os.path.join(TESTS, "run_recover_process.py"),
                            f"recover,teacher={teacher},batch_size=4,iterations=12", str(workdir)],
                           env_for=fault)


def _gather_floats(workdir):
    written = [set(map(tuple, json.load(open(workdir / f"written_{pid}.json")))) for pid in range(2)]
    # Each host wrote its own share: the batches its devices ran, and nothing else.
    assert all(written) and not written[0] & written[1]
    got = read_floats(workdir)
    assert set(got) == written[0] | written[1]
    return got


@pytest.fixture(scope="module")
def one_device_ref(tmp_path_factory, tiny_teacher):
    # 4 batches of 4, so 4 devices each run one; 12 iterations checkpoint at 3, 6, 9.
    return recover_floats(tmp_path_factory.mktemp("ref") / "one", 1, tiny_teacher[2], batch_size=4,
                          iterations=12)


def test_two_processes_match_one_device(tmp_path, tiny_teacher, one_device_ref):
    for p in _two_processes(tmp_path / "multi", tiny_teacher[2]):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert_same_images(one_device_ref, _gather_floats(tmp_path / "multi"))


def test_host_dies_and_the_job_resumes_from_the_multihost_checkpoint(tmp_path, tiny_teacher,
                                                                     one_device_ref):
    """Process 1 is SIGKILLed after its 2nd checkpoint; the job is torn down (as SLURM's
    --kill-on-bad-exit or local_cluster.sh do) and restarted: it resumes, images unchanged."""
    workdir = tmp_path / "multi"
    p0, p1 = _two_processes(workdir, tiny_teacher[2], fault_pid=1)
    p1.communicate(timeout=300)
    assert p1.returncode == -9
    p0.kill()
    p0.communicate()
    assert not os.path.exists(workdir / "recover" / "manifest.json")
    procs = _two_processes(workdir, tiny_teacher[2])
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert any("resumed batches" in out for out, _ in outs)
    assert_same_images(one_device_ref, _gather_floats(workdir))


def test_clear_errors(tmp_path, tiny_teacher):
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        recover.run(tiny_config(teacher=str(tmp_path / "nope")), str(tmp_path / "w"))
    c = tiny_config(teacher=tiny_teacher[2])
    c.data.num_classes = 5
    with pytest.raises(ValueError, match="has 4 classes but the data has 5"):
        recover.run(c, str(tmp_path / "w"))
    _, variables, _ = tiny_teacher
    broken = jax.tree.map(np.array, variables)
    broken["params"]["fc"]["bias"][0] = np.nan
    path = str(tmp_path / "nan_teacher")
    checkpoint.save_model(path, broken, json.load(open(os.path.join(tiny_teacher[2], "model.json"))))
    with pytest.raises(FloatingPointError, match="NaN"):
        recover.run(tiny_config(teacher=path), str(tmp_path / "nan"))
    assert not os.path.exists(tmp_path / "nan" / "recover" / "manifest.json")
    assert not os.path.exists(tmp_path / "nan" / "recover" / "images")


def test_verifier_reports_accuracy_on_the_results(tmp_path, tiny_teacher):
    c = tiny_config(teacher=tiny_teacher[2])
    c.recover.verifier = tiny_teacher[2]  # the teacher as its own verifier must agree with itself
    summary = recover.run(c, str(tmp_path / "v"))
    assert summary["verifier_accuracy"] == pytest.approx(summary["teacher_accuracy"])
    entries = json.load(open(tmp_path / "v" / "recover" / "manifest.json"))["images"]
    assert all(e["verifier_pred"] == e["teacher_pred"] for e in entries)


def test_recovery_step_compiles_once_for_all_rounds_and_chunks(tmp_path, tiny_teacher):
    # 2 rounds (two batches of 8 on one device) × 4 chunks of 3 iterations: one compilation.
    c = tiny_config(teacher=tiny_teacher[2], iterations=12)
    c.num_devices = 1
    seen = compiles(lambda: recover.run(c, str(tmp_path / "w")))
    assert seen.count("jit(iterate_local)") == 1, seen
    assert seen.count("jit(init_local)") == 1 and seen.count("jit(score_local)") == 1
