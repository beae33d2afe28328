"""The images of every student batch, streamed by Grain (relabel, validate and the baselines alike).

A student set is a random-access source: the recovered ImageFolder, or a random real subset of the
train split. For each epoch, Grain maps batch b of the epoch's order to its images, decoded and
fitted to image_size (`EvalResize`), with worker threads or processes (`student.data_workers`)
prefetching `student.data_prefetch` batches ahead. Each host reads only its rows of a batch the
devices can split evenly (the squeeze pipeline's layout: `parallel.global_batch`); a last, partial
batch is read whole by every host and placed replicated. So host memory holds the prefetched
batches, not the set, and the same seed gives the same batches (images, crops, labels) on any
number of devices or hosts. Augmentation stays on the device, inside the jitted step.

A set small enough to hold (`IN_MEMORY_BYTES` decoded, e.g. the default's 100 images: 78 KB) is
decoded once and its batches gathered in the training thread: a Grain iterator per epoch and PNG
decoding per batch cost more than the default's 4-step epochs (relabel on two lanes: 36.2 → 24.7 s).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from sre2l_jax import parallel
from sre2l_jax.data.sources import source_labels
from sre2l_jax.data.transforms import EvalResize
from sre2l_jax.student.plans import batch_bounds


def fingerprint(source: Any) -> str:
    """A content hash of a student set, streamed: the files' bytes for an ImageFolder, otherwise
    the decoded images; with the labels."""
    h = hashlib.sha256(np.asarray(source_labels(source), np.int64).tobytes())
    paths = getattr(source, "paths", None)
    for i in range(len(source)):
        if paths is not None:
            with open(paths[i], "rb") as f:
                h.update(f.read())
        else:
            h.update(np.ascontiguousarray(source[i]["image"]).tobytes())
    return h.hexdigest()[:16]


IN_MEMORY_BYTES = 256 * 2**20


@dataclasses.dataclass
class _Batches:
    """Grain's random-access view of one epoch: element b = this host's rows of batch b."""

    read: Callable[[np.ndarray], dict]  # source indices → {"image": uint8 [n,H,W,C], "label"}
    order: np.ndarray
    bounds: list
    n_dev: int
    process: tuple[int, int]  # (index, count): a sharded batch's rows are split between hosts

    def __len__(self) -> int:
        return len(self.bounds)

    def sharded(self, b: int) -> bool:
        """Whether batch b splits evenly over the devices (else every host reads it whole)."""
        s, e = self.bounds[b]
        return (e - s) % self.n_dev == 0

    def __getitem__(self, b: int) -> dict:
        s, e = self.bounds[b]
        lo, hi = 0, e - s
        if self.sharded(b):
            per_host = (e - s) // self.process[1]
            lo, hi = self.process[0] * per_host, (self.process[0] + 1) * per_host
        return self.read(self.order[s + lo:s + hi])


def _decode(source: Any, fit: EvalResize, idx: np.ndarray) -> dict:
    records = [fit.map(source[int(i)]) for i in idx]
    return {"image": np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8),
            "label": np.asarray([r["label"] for r in records], np.int32)}


class StudentData:
    """A student set on its way to the mesh, one epoch at a time."""

    def __init__(self, source: Any, image_size: int, mesh, batch_size: int, workers: int = 0,
                 prefetch: int = 2, in_memory_bytes: int = IN_MEMORY_BYTES):
        self.source, self.mesh, self.batch_size = source, mesh, batch_size
        self.labels = source_labels(source).astype(np.int32)
        self.fit = EvalResize(image_size, image_size)
        self.workers, self.prefetch = workers, prefetch
        self.bounds = batch_bounds(len(source), batch_size)
        self.cached = None  # the decoded set, when it is small enough to hold
        if len(source) * image_size * image_size * 3 <= in_memory_bytes:
            self.cached = _decode(source, self.fit, np.arange(len(source)))

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, order: np.ndarray) -> Iterator[tuple[int, jax.Array, jax.Array]]:
        """(batch index, images uint8 [B,H,W,C], labels int32 [B]) on the mesh, in `order`."""
        read = (functools.partial(_decode, self.source, self.fit) if self.cached is None else
                lambda idx: {k: v[idx] for k, v in self.cached.items()})
        view = _Batches(read, np.asarray(order), self.bounds, self.mesh.devices.size,
                        (jax.process_index(), jax.process_count()))
        if self.cached is not None:
            ds = (view[b] for b in range(len(view)))
        else:
            ds = grain.MapDataset.source(view).to_iter_dataset(
                grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch))
            if self.workers:
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        for b, local in enumerate(ds):
            if view.sharded(b):
                placed = parallel.global_batch(self.mesh, local)
            else:
                placed = parallel.replicate(self.mesh, local)
            yield b, placed["image"], placed["label"]
