"""Recovered images do not depend on the device or host count, at the default recipe's settings.

A ResNet-18 (low-resolution stem, 28×28×1, 10 classes) with non-trivial running statistics, the
Fashion-MNIST recovery recipe at runlocal size (α_BN 0.01, lr 0.25, no crop, flip, jitter [0, 4],
20 iterations), two batches of 20: the images of 1, 2 and 4 devices of this process, and those of
a 1-device process, of 2 processes × 2 devices and of a run killed on 2 devices and resumed on 1,
must be the same to the bit. Under `shard_map` they were not (1 vs 4 devices differed by up to
0.89 in normalized space, 87-95 % of the pixels). Every process here runs XLA:CPU on a 4-thread
pool (conftest): the pool's size, not the device count, is what changes CPU rounding.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, cli_env, load_config, pngs, read_floats, start_processes

from sre2l_jax import checkpoint, conv, models, recover
from sre2l_jax.data.sources import FASHION_MNIST_CLASSES

RUNLOCAL = "recover,runlocal"
IPC = 4  # 40 slots in two batches of 20


def _teacher(path: str) -> str:
    """The runlocal-width (8) ResNet-18 with random weights and non-trivial running statistics."""
    model = models.create_model("resnet18", 10, 8, "lowres")
    variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
    rng = np.random.default_rng(0)
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for layer in jax.tree.leaves(stats, is_leaf=lambda x: isinstance(x, dict) and "mean" in x):
        layer["mean"] = rng.normal(0, 0.3, layer["mean"].shape).astype(np.float32)
        layer["var"] = rng.uniform(0.5, 1.5, layer["var"].shape).astype(np.float32)
    meta = {"arch": "resnet18", "width": 8, "stem": "lowres", "num_classes": 10, "channels": 1,
            "image_size": 28, "mean": [0.2860], "std": [0.3530], "class_names": FASHION_MNIST_CLASSES,
            "top1": None, "source": "test"}
    checkpoint.save_model(path, {"params": variables["params"], "batch_stats": stats}, meta)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return _teacher(str(tmp_path_factory.mktemp("rn18") / "model"))


def _config(teacher_path: str, devices: int, **recover_opts):
    c = load_config("fashion_mnist", RUNLOCAL)
    c.unlock()
    c.num_devices = devices
    c.recover.teacher, c.recover.save_float, c.recover.ipc = teacher_path, True, IPC
    for k, v in recover_opts.items():
        c.recover[k] = v
    return c


def _assert_identical(a_dir, b_dir) -> None:
    a, b = read_floats(a_dir), read_floats(b_dir)
    assert len(a) == 40 and a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst == 0.0, f"float images differ by up to {worst}"
    assert pngs(os.path.join(a_dir, "recover", "images")) == pngs(os.path.join(b_dir, "recover", "images"))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, teacher):
    workdir = tmp_path_factory.mktemp("one")
    recover.run(_config(teacher, 1), str(workdir))
    return workdir


@pytest.mark.parametrize("devices", [2, 4])
def test_images_are_identical_on_1_2_and_4_devices(tmp_path, teacher, one_device, devices):
    recover.run(_config(teacher, devices), str(tmp_path))
    _assert_identical(one_device, tmp_path)
    # Different slots really differ: the comparison above could fail.
    floats = read_floats(tmp_path)
    assert not np.array_equal(floats[(0, 0)], floats[(0, 1)])


def _cli_args(teacher_path: str, workdir) -> list[str]:
    return [sys.executable, "-m", "sre2l_jax.main", f"--config=configs/fashion_mnist.py:{RUNLOCAL}",
            f"--config.recover.teacher={teacher_path}", "--config.recover.save_float=True",
            f"--config.recover.ipc={IPC}",
            "--config.recover.checkpoint_every=5", f"--workdir={workdir}"]


def _cli_run(teacher_path: str, workdir, devices: int, extra: dict | None = None):
    """The CLI in a process whose CPU is split into `devices` devices."""
    return subprocess.run(_cli_args(teacher_path, workdir), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=cli_env(devices, **(extra or {})))


def test_a_one_device_process_gives_the_test_process_images(tmp_path, teacher, one_device):
    """A process with one CPU device against this 4-device process: the same images once both run
    on a 4-thread pool (conftest). Without that a 1-device process on 2 cores rounds differently
    (up to 1.43 after the 20 runlocal iterations, every one of the 40 slots; README, "Determinism")."""
    run = _cli_run(teacher, tmp_path, 1)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_identical(one_device, tmp_path)


def test_two_processes_give_the_one_device_images(tmp_path, teacher, one_device):
    procs = start_processes(_cli_args(teacher, tmp_path))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    _assert_identical(one_device, tmp_path)


def test_killed_on_two_devices_resumed_on_one(tmp_path, teacher, one_device):
    killed = _cli_run(teacher, tmp_path, 2, {"SRE2L_FAULT_KILL_AFTER_SAVES": "2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _cli_run(teacher, tmp_path, 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(one_device, tmp_path)


def test_winograd_images_are_identical_on_1_and_2_devices(tmp_path, monkeypatch, teacher, one_device):
    """A lowered Winograd size threshold puts layer4's stride-1 3×3 convolutions (4² maps, 11.8M
    multiply-adds per batch of 20) on the Winograd path and leaves the others (9.0M) canonical: both
    kinds in one step, at a fraction of the trace and compile time of Winograd everywhere."""
    monkeypatch.setenv("SRE2L_CONV", "winograd")
    monkeypatch.setattr(conv, "WINOGRAD_MIN_MACS", 10**7)
    variables, meta = checkpoint.load_model(teacher)
    model = models.model_from_meta(meta)
    kernels = models.with_winograd_kernels(model, variables, (20, 28, 28, 1))[models.WINOGRAD]
    assert {f"{layer}/{c}" for layer, convs in kernels.items() for c in convs} == {
        "layer4_0/conv2", "layer4_1/conv1", "layer4_1/conv2"}
    for devices in (1, 2):
        recover.run(_config(teacher, devices), str(tmp_path / f"d{devices}"))
    _assert_identical(tmp_path / "d1", tmp_path / "d2")
    canonical, ours = read_floats(one_device), read_floats(tmp_path / "d1")
    assert any(not np.array_equal(canonical[k], ours[k]) for k in ours)  # Winograd did run
