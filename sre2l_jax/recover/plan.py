"""Which images are recovered together: the run's batches and how they are grouped into rounds.

A batch's BN statistics are taken over its slots, so the batch composition is part of the
algorithm (SPEC §2); a round is one batch per parallel slot (device × `batches_per_device`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Batch:
    index: int
    classes: tuple[int, ...]
    ipcs: tuple[int, ...]


def plan_batches(num_classes: int, ipc: int, batch_size: int, composition: str = "sequential",
                 classwise_classes: int = 2) -> list[Batch]:
    """The run's global job list; it depends only on (classes, ipc, batch size, composition).

    sequential (the published single-GPU code): slots ordered by (ipc, class) and cut into chunks of
    `batch_size`: with ≥ batch_size classes a batch is consecutive classes at one ipc index; with
    fewer, a batch takes further ipc indices. classwise: `classwise_classes` classes ×
    batch_size/classwise_classes images (the authors' later multi-GPU variant).
    """
    if composition == "sequential":
        slots = [(c, k) for k in range(ipc) for c in range(num_classes)]
    elif composition == "classwise":
        per_class, rem = divmod(batch_size, classwise_classes)
        if rem or ipc % per_class or num_classes % classwise_classes:
            raise ValueError("classwise composition needs batch_size = classwise_classes × m with m "
                             "dividing ipc and classwise_classes dividing the class count")
        slots = [(c, k) for c0 in range(0, num_classes, classwise_classes)
                 for k0 in range(0, ipc, per_class)
                 for c in range(c0, c0 + classwise_classes) for k in range(k0, k0 + per_class)]
    else:
        raise ValueError(f"unknown recover.composition {composition!r}")
    chunks = [slots[i:i + batch_size] for i in range(0, len(slots), batch_size)]
    return [Batch(i, tuple(c for c, _ in ch), tuple(k for _, k in ch)) for i, ch in enumerate(chunks)]


def select_range(batches: list[Batch], ipc_range: tuple[int, int],
                 class_range: tuple[int, int]) -> list[Batch]:
    """Batches inside [ipc_start, ipc_end) × [class_start, class_end); a batch cut by the range is
    an error, since running part of it would change its BN statistics."""
    chosen = []
    for b in batches:
        inside = [ipc_range[0] <= k < ipc_range[1] and class_range[0] <= c < class_range[1]
                  for c, k in zip(b.classes, b.ipcs)]
        if all(inside):
            chosen.append(b)
        elif any(inside):
            raise ValueError(
                f"the ipc range {ipc_range} / class range {class_range} cuts batch {b.index} "
                f"(ipc {min(b.ipcs)}..{max(b.ipcs)}, classes {min(b.classes)}..{max(b.classes)}); "
                "choose boundaries on batch edges so each batch is recovered whole")
    return chosen


def configured_batches(config) -> tuple[list[Batch], list[Batch]]:
    """(every batch of the run, the batches inside the configured ipc/class range)."""
    rc, num_classes = config.recover, config.data.num_classes
    everything = plan_batches(num_classes, rc.ipc, rc.batch_size, rc.composition, rc.classwise_classes)
    ipc_end = rc.ipc if rc.ipc_end < 0 else rc.ipc_end
    class_end = num_classes if rc.class_end < 0 else rc.class_end
    chosen = select_range(everything, (rc.ipc_start, ipc_end), (rc.class_start, class_end))
    if not chosen:
        raise ValueError("the ipc/class range selects no batch")
    return everything, chosen


def rounds(batches: list[Batch], parallel_slots: int) -> list[list[Batch]]:
    """Group same-size batches into rounds of `parallel_slots` (all devices run equal shapes)."""
    out = []
    for size in sorted({len(b.classes) for b in batches}, reverse=True):
        same = [b for b in batches if len(b.classes) == size]
        out += [same[i:i + parallel_slots] for i in range(0, len(same), parallel_slots)]
    return out
