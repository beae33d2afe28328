"""Test session setup: 4 simulated CPU devices, a persistent compile cache, one shared tiny teacher."""

import os

# Must happen before jax is imported anywhere: tests compare 1, 2 and 4 devices in one process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("SRE2L_TEST_CACHE", os.path.expanduser("~/.cache/sre2l_jax_tests")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import tiny_config as tiny_config_file

from sre2l_jax import checkpoint, models

TINY = {"arch": "_tiny", "width": 4, "stem": "lowres", "num_classes": 4, "channels": 1,
        "image_size": 12, "mean": [0.5], "std": [0.25]}


def tiny_config(stage: str = "recover", **options):
    """The tiny recover config (4 classes, 12×12 grayscale), unlocked for per-test edits."""
    arg = ",".join([stage] + [f"{k}={v}" for k, v in options.items()])
    c = tiny_config_file.get_config(arg)
    c.unlock()
    return c


def randomized_teacher(seed: int = 0):
    """The tiny model with random weights and non-trivial running statistics."""
    model = models.create_model("_tiny", 4, width=4, stem="lowres")
    variables = models.init_variables(model, jax.random.key(seed), (12, 12, 1))
    rng = np.random.default_rng(seed)
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for layer in jax.tree.leaves(stats, is_leaf=lambda x: isinstance(x, dict) and "mean" in x):
        layer["mean"] = rng.normal(0, 0.3, layer["mean"].shape).astype(np.float32)
        layer["var"] = rng.uniform(0.5, 1.5, layer["var"].shape).astype(np.float32)
    return model, {"params": variables["params"], "batch_stats": stats}


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """(model, variables, checkpoint dir) shared by every test of the session."""
    model, variables = randomized_teacher()
    path = str(tmp_path_factory.mktemp("teacher") / "model")
    checkpoint.save_model(path, variables, {**TINY, "class_names": ["a", "b", "c", "d"],
                                            "top1": None, "source": "test"})
    return model, variables, path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(argv: list[str], n: int = 2, devices: int = 2, env_for=None) -> list:
    """Start `argv` as n processes × `devices` simulated CPU devices joined by jax.distributed on
    127.0.0.1 (what launch/local_cluster.sh does); env_for(pid) adds per-process variables."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    procs = []
    for pid in range(n):
        env = {**os.environ, "PYTHONPATH": repo, "SRE2L_COORDINATOR": f"127.0.0.1:{port}",
               "SRE2L_NUM_PROCESSES": str(n), "SRE2L_PROCESS_ID": str(pid),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               **(env_for(pid) if env_for else {})}
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs
