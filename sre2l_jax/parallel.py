"""Device mesh and the host-local ↔ global array plumbing every stage shares.

One 1-D mesh axis, `data`, over every device of every host. Data-parallel steps (squeeze, students)
shard the global batch over it under `jax.jit`, so BatchNorm sees the whole global batch. Recovery
runs independent batches: `PerDevice` runs one single-device program on every device's slice, so
each batch goes through the same compiled computation whatever the mesh (under `shard_map` XLA's
SPMD pipeline compiles the per-device body differently for 1 and for N devices: other fusions,
other float rounding, images that drift apart over the iterations).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def training_compiler_options() -> dict | None:
    """XLA options for the training steps (squeeze, students): on CPU, XLA's own Eigen
    convolutions and loops instead of the YNNPACK/XNNPACK library fusions, which are slower for
    the small-channel convolutions and their weight gradients here (a width-8 ResNet-18 squeeze
    step at 28², batch 256: 163 → 135 ms; benchmarks/RESULTS.md). Recovery keeps the defaults:
    there they are faster."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_xnnpack": False}


def one_shot_compiler_options() -> dict | None:
    """XLA options for programs that run once per stage (initializing a model and its optimizer):
    on CPU, LLVM at -O2 instead of -O3 compiles the random initialization of the ResNet-18 in about
    a third of the time (6.1 s → 1.9 s at width 8, benchmarks/RESULTS.md) with bit-identical values
    (tests/test_foundation.py); it runs once, so the faster code of -O3 buys nothing."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": 2}


def maybe_initialize_distributed() -> None:
    """Join a multi-host job when the launcher says so (coordinator env vars or a TPU pod)."""
    if os.environ.get("SRE2L_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["SRE2L_COORDINATOR"],
            num_processes=int(os.environ["SRE2L_NUM_PROCESSES"]),
            process_id=int(os.environ["SRE2L_PROCESS_ID"]))
    elif os.environ.get("SRE2L_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # TPU pods and SLURM: JAX reads the cluster environment


def use_cpu_devices(n: int) -> None:
    """Split the host CPU into `n` JAX devices; call before the first JAX computation.

    XLA:CPU runs a narrow-channel training step on about one core whatever its thread pool (the
    Fashion-MNIST squeeze step, batch 128: 82 ms single-threaded, 84 ms with the pool), so the
    data-parallel steps run 1.1-1.4× faster over two simulated devices (benchmarks/RESULTS.md). Only
    the CPU backend changes; an explicit `--xla_force_host_platform_device_count` in XLA_FLAGS
    (tests, launch/local_cluster.sh) wins.
    """
    if n > 0 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", n)


def make_mesh(num_devices: int = 0, *, batch: int = 0, jobs: int = 0) -> Mesh:
    """A mesh over all devices (or the first `num_devices`, for tests comparing device counts).

    In a single-process run the mesh keeps only devices with work of their own: for a step over a
    global `batch`, the most devices that split it evenly; for `jobs` independent pieces (recovery's
    batches), at most one device per piece. A device without its own share would repeat another's
    (a replicated step, an idle recovery slot), and simulated CPU devices share the cores, so the
    repeat slows the device whose result counts. Multi-host meshes keep every host's devices.
    """
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, only {len(devices)} exist")
        devices = devices[:num_devices]
    if jax.process_count() == 1:
        n = len(devices)
        if batch:
            n = max(d for d in range(1, n + 1) if batch % d == 0)
        if jobs:
            n = max(1, min(n, jobs))
        devices = devices[:n]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def lane_meshes(num_devices: int = 0, *, batch: int) -> list[Mesh]:
    """Disjoint meshes of `make_mesh(num_devices, batch=batch)`'s size over the devices: one per
    independent job (a student) that can run at the same time as the others. Each job on its lane
    runs the same program as alone on a mesh of that size, so its result does not depend on how
    many lanes there are."""
    size = make_mesh(num_devices, batch=batch).devices.size
    devices = list(make_mesh(num_devices).devices.flat)
    return [Mesh(np.asarray(devices[i:i + size]), (DATA_AXIS,))
            for i in range(0, len(devices) - size + 1, size)]


def compile_at_once(compiles: list[Callable[[], object]]) -> None:
    """Run ahead-of-time compilations in threads: XLA compiles without holding the GIL, so lanes
    that each need the same program for their own devices compile it side by side instead of each
    lane's first step waiting for the previous lane's (validate's student step: 6 s per lane)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(compiles))) as pool:
        for done in [pool.submit(c) for c in compiles]:
            done.result()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicated_like(tree, mesh: Mesh):
    """The replicated sharding for every leaf of `tree` (a train state's `in/out_shardings`)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda _: sharding, tree)


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


def local_devices(mesh: Mesh) -> list:
    """This process's devices of `mesh`, in mesh order."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def device_pieces(tree, mesh: Mesh) -> list:
    """One pytree per local device of `mesh`: each global array leaf's shard on that device (a
    replicated leaf gives that device's copy); other leaves are passed through."""
    devices = local_devices(mesh)
    leaves, treedef = jax.tree.flatten(tree)

    def pieces(leaf):
        if not isinstance(leaf, jax.Array):
            return [leaf] * len(devices)
        by_device = {s.device: s.data for s in leaf.addressable_shards}
        return [by_device[d] for d in devices]

    per_leaf = [pieces(leaf) for leaf in leaves]
    return [jax.tree.unflatten(treedef, [p[i] for p in per_leaf]) for i in range(len(devices))]


def from_device_pieces(pieces: list, mesh: Mesh):
    """Inverse of `device_pieces` for data-sharded trees: per-device arrays → global arrays whose
    leading axis is split over `data` in mesh order."""
    flat = [jax.tree.flatten(p) for p in pieces]
    treedef = flat[0][1]
    sharding = batch_sharding(mesh)
    leaves = []
    for i, first in enumerate(flat[0][0]):
        shape = (first.shape[0] * mesh.devices.size, *first.shape[1:])
        leaves.append(jax.make_array_from_single_device_arrays(shape, sharding,
                                                               [f[0][i] for f in flat]))
    return jax.tree.unflatten(treedef, leaves)


class PerDevice:
    """`fn` jitted once as a single-device program and run on every local device's slice.

    Called with global arrays (sharded over `data`, or replicated) and plain values; returns
    global arrays sharded over `data`. Every device runs the identical compiled computation, on
    any mesh, so a slice's result does not depend on how many devices or hosts share the work.
    Calls are dispatched asynchronously, so the devices run in parallel.
    """

    def __init__(self, fn, donate_argnums=()):
        self.fn = jax.jit(fn, donate_argnums=donate_argnums)

    def __call__(self, mesh: Mesh, *args):
        per_device = device_pieces(args, mesh)
        return from_device_pieces([self.fn(*a) for a in per_device], mesh)


def host_barrier(name: str, timeout_s: int = 3600) -> None:
    """Block until every process reaches `name`: a coordination-service barrier, no collective.

    On CPU a cross-host collective creates its Gloo context on first use with a fixed 30 s deadline,
    so a host that arrives later than that fails it (seen: recovery at 224², 2 processes sharing 2
    cores, one compiling longer). Meeting here first, with a long timeout, closes the gap."""
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def gather_hosts(tree, name: str):
    """`process_allgather(tree, tiled=True)` after every host has reached `name`."""
    host_barrier(name)
    return multihost_utils.process_allgather(tree, tiled=True)
