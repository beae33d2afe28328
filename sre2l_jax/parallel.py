"""Device mesh and the host-local ↔ global array plumbing every stage shares.

One 1-D mesh axis, `data`, over every device of every host. Data-parallel steps (squeeze, students)
shard the global batch over it under `jax.jit`, so BatchNorm sees the whole global batch and results
do not depend on the device count. Recovery maps independent batches onto it with `jax.shard_map`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Join a multi-host job when the launcher says so (coordinator env vars or a TPU pod)."""
    if os.environ.get("SRE2L_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["SRE2L_COORDINATOR"],
            num_processes=int(os.environ["SRE2L_NUM_PROCESSES"]),
            process_id=int(os.environ["SRE2L_PROCESS_ID"]))
    elif os.environ.get("SRE2L_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # TPU pods and SLURM: JAX reads the cluster environment


def make_mesh(num_devices: int = 0) -> Mesh:
    """A mesh over all devices (or the first `num_devices`, for tests comparing device counts)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, only {len(devices)} exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local: dict) -> dict:
    """Assemble each host's slice of the batch into global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def shard_host_identical(mesh: Mesh, array: np.ndarray) -> jax.Array:
    """Shard an array that every host holds in full along `data` (each host places its part)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, batch_sharding(mesh), lambda idx: array[idx])


def replicate(mesh: Mesh, tree):
    """Place a host-identical pytree on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        tree)


def to_host(tree):
    """Fully-replicated or fully-addressable arrays → NumPy."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
