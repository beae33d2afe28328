"""Test session setup: 4 simulated CPU devices on a 4-thread pool, a persistent compile cache, one
shared tiny teacher."""

import os

# Must happen before jax is imported anywhere: tests compare 1, 2 and 4 devices in one process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU's intra-op pool has max(PJRT_NPROC or the core count, devices) threads, and CPU rounding
# follows the pool's size (Eigen partitions its work by it): without a fixed size a 1-device
# subprocess rounds differently from this 4-device process, and each machine from the next
# (README, "Determinism").
# The CLI processes the tests start inherit it.
os.environ["PJRT_NPROC"] = "4"

import jax
import pytest

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("SRE2L_TEST_CACHE", os.path.expanduser("~/.cache/sre2l_jax_tests")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from helpers import TINY, randomized_teacher

from sre2l_jax import checkpoint


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """(model, variables, checkpoint dir) shared by every test of the session."""
    model, variables = randomized_teacher()
    path = str(tmp_path_factory.mktemp("teacher") / "model")
    checkpoint.save_model(path, variables, {**TINY, "class_names": ["a", "b", "c", "d"],
                                            "top1": None, "source": "test"})
    return model, variables, path
