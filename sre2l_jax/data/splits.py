"""Splits of a data set: the train, evaluation and held-out roles, class subsets, caps.

`build_source(data_cfg, split)` is the one way the stages get data: it opens the source the config
names (IDX, ImageFolder, TFDS), applies `class_ids`, checks classes and channels, carves the
evaluation split out of train when `data.val_fraction` is set and the held-out split when
`data.holdout` is, and caps the example count for smoke runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sre2l_jax.data.sources import (
    FASHION_MNIST_APT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ChannelAdapter,
    IdxSource,
    ImageFolderSource,
    IndexedSource,
    SubsetSource,
    TfdsSource,
    list_class_folders,
    source_labels,
)


def balanced_prefix(source: Any, max_examples: int, seed: int = 0) -> Any:
    """At most `max_examples` records, cycling through classes in a fixed random order.

    Ranking every record by its position among its own class in a seeded permutation, then taking
    the lowest ranks, gives each class max_examples/num_classes records whenever it has enough.
    """
    if max_examples <= 0 or max_examples >= len(source):
        return source
    labels = source_labels(source)
    perm = np.random.default_rng(seed).permutation(len(labels))
    # Group the permutation by class (stable, so each group keeps the permuted order); a record's
    # rank is its offset inside its group. O(N log N), fine for ImageNet-sized label arrays.
    order = perm[np.argsort(labels[perm], kind="stable")]
    grouped = labels[order]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.searchsorted(grouped, grouped, side="left")
    position = np.empty(len(labels), dtype=np.int64)
    position[perm] = np.arange(len(labels))
    # Ties at the cut-off rank go by permutation position, not by which class has lower indices.
    chosen = np.sort(np.lexsort((position, rank))[:max_examples])
    return IndexedSource(source, chosen, labels[chosen], source.class_names)


HOLDOUT = "holdout"  # the role of the held-out part of the train split
_HOLDOUT_TAG, _VAL_TAG = 0x401D, 0x7A1


def _resolve_split(data_cfg: Any, split: str) -> tuple[bool, str]:
    """(is_train, split name): 'train'/'eval'/'holdout' name the roles, anything else is a
    literal split."""
    if split in ("train", HOLDOUT):
        return True, data_cfg.train_split
    if split == "eval":
        return False, data_cfg.eval_split
    return split == data_cfg.train_split, split


def holdout_indices(labels: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """n train indices, n / num_classes of each class, drawn from `seed` (sorted)."""
    per_class, rem = divmod(n, num_classes)
    if rem or n < 0:
        raise ValueError(f"data.holdout={n} must be a multiple of the {num_classes} classes "
                         "(the held-out split is class-balanced)")
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) <= per_class:
            raise ValueError(f"data.holdout={n} takes {per_class} images of class {c}, which has "
                             f"only {len(pool)}; lower data.holdout")
        chosen.append(np.random.default_rng([seed, _HOLDOUT_TAG, c]).permutation(pool)[:per_class])
    return np.sort(np.concatenate(chosen))


def val_indices(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """`fraction` of each class's train indices (at least one), drawn from `seed` (sorted): the
    evaluation split of a tree that has no val/ folder."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        k = max(1, round(fraction * len(pool)))
        if len(pool) <= k:
            raise ValueError(f"class {c} has {len(pool)} train images: too few to hold out "
                             f"data.val_fraction={fraction} for evaluation")
        chosen.append(np.random.default_rng([seed, _VAL_TAG, c]).permutation(pool)[:k])
    return np.sort(np.concatenate(chosen))


def _part(source: Any, indices: np.ndarray, keep: bool) -> Any:
    """The records of `source` at `indices` (keep) or all the others."""
    labels = source_labels(source)
    if not keep:
        indices = np.setdiff1d(np.arange(len(labels)), indices)
    return IndexedSource(source, indices, labels[indices], source.class_names)


def _open(data_cfg: Any, is_train: bool, name: str) -> Any:
    """The raw source of split `name` (before class subsets, splits and caps)."""
    directory = data_cfg.dir
    if data_cfg.source in ("idx", "imagefolder") and not (directory and os.path.isdir(directory)):
        raise _missing_dir(data_cfg, directory, f"data directory for source {data_cfg.source!r}")
    if data_cfg.source == "idx":
        fashion = "fashion" in f"{data_cfg.name} {directory}".lower()
        return IdxSource(directory, name, FASHION_MNIST_CLASSES if fashion else None)
    if data_cfg.source == "imagefolder":
        class_names = None
        if not is_train:
            train_dir = os.path.join(directory, data_cfg.train_split)
            if not os.path.isdir(train_dir):
                raise _missing_dir(data_cfg, train_dir, "train split folder")
            class_names = list_class_folders(train_dir)
        split_dir = os.path.join(directory, name)
        if not os.path.isdir(split_dir):
            raise _missing_dir(data_cfg, split_dir, f"split folder for {name!r}")
        return ImageFolderSource(directory, name, class_names, channels=data_cfg.channels)
    if data_cfg.source == "tfds":
        return TfdsSource(data_cfg.tfds_name or data_cfg.name, name, data_dir=directory or None,
                          download=data_cfg.tfds_download)
    raise ValueError(f"data.source must be idx, imagefolder or tfds, got {data_cfg.source!r}")


def _checked(data_cfg: Any, source: Any, name: str) -> Any:
    """`class_ids`, the class count and the channels (converted where data.convert_channels)."""
    if data_cfg.class_ids is not None:
        source = SubsetSource(source, data_cfg.class_ids)
    if len(source.class_names) != data_cfg.num_classes:
        raise ValueError(f"{data_cfg.name or data_cfg.source} split {name!r} has "
                         f"{len(source.class_names)} classes but data.num_classes="
                         f"{data_cfg.num_classes}; set data.num_classes={len(source.class_names)}"
                         " or fix data.class_ids")
    channels = getattr(source, "channels", None)
    if channels is not None and channels != data_cfg.channels:
        if not data_cfg.convert_channels:
            raise ValueError(f"{data_cfg.name or data_cfg.source} images have {channels} channel(s) "
                             f"but data.channels={data_cfg.channels}; set data.convert_channels=True to "
                             "replicate gray images to 3 channels (or take 1 channel of equal ones)")
        source = ChannelAdapter(source, data_cfg.channels)
    return source


def _missing_dir(data_cfg: Any, directory: str, what: str) -> FileNotFoundError:
    msg = f"{what} {directory!r} does not exist; set the config key data.dir"
    fashion = "fashion" in f"{data_cfg.name} {directory}".lower()
    if fashion or os.path.abspath(directory or ".") == FASHION_MNIST_DIR:
        msg += f" (Fashion-MNIST is installed to {FASHION_MNIST_DIR} by `{FASHION_MNIST_APT}`)"
    return FileNotFoundError(msg)


def build_source(data_cfg: Any, split: str) -> Any:
    """The source for `split` ('train', 'eval', 'holdout' or a literal split name) as `data_cfg`
    describes.

    Applies `class_ids`, checks the class count and channels (converting them with
    `data.convert_channels`), carves the evaluation split out of train when `data.val_fraction`
    is set, takes the `data.holdout` images out of the train split (they form the 'holdout'
    split), and applies the example caps.
    """
    is_train, name = _resolve_split(data_cfg, split)
    if data_cfg.val_fraction and not is_train:  # the evaluation split is carved out of train
        name = data_cfg.train_split
        source = _checked(data_cfg, _open(data_cfg, True, name), name)
        held = val_indices(source_labels(source), data_cfg.val_fraction, data_cfg.num_classes,
                           data_cfg.holdout_seed)
        return balanced_prefix(_part(source, held, keep=True), data_cfg.max_eval_examples)
    source = _checked(data_cfg, _open(data_cfg, is_train, name), name)
    if is_train and data_cfg.val_fraction:
        held = val_indices(source_labels(source), data_cfg.val_fraction, data_cfg.num_classes,
                           data_cfg.holdout_seed)
        source = _part(source, held, keep=False)
    if split == HOLDOUT and not data_cfg.holdout:
        raise ValueError("no held-out split: set data.holdout to the number of train images to hold out")
    if is_train and data_cfg.holdout:
        held = holdout_indices(source_labels(source), data_cfg.holdout, len(source.class_names),
                               data_cfg.holdout_seed)
        source = _part(source, held, keep=split == HOLDOUT)
        if split == HOLDOUT:
            return source
    cap = data_cfg.max_train_examples if is_train else data_cfg.max_eval_examples
    return balanced_prefix(source, cap)


