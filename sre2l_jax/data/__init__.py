"""Data layer: random-access sources, NumPy/Grain transforms and the train/eval pipelines."""

from sre2l_jax.data.pipeline import eval_batches, steps_per_epoch, train_iterator
from sre2l_jax.data.sources import (
    FASHION_MNIST_CLASSES,
    IdxSource,
    ImageFolderSource,
    IndexedSource,
    SubsetSource,
    TfdsSource,
    load_arrays,
    read_idx,
    source_labels,
)
from sre2l_jax.data.splits import balanced_prefix, build_source, holdout_indices, val_indices
from sre2l_jax.data.transforms import (
    EvalResize,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    resize_image,
    rrc_params,
    train_transforms,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "EvalResize", "IdxSource", "ImageFolderSource", "IndexedSource",
    "Normalize", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop", "SubsetSource",
    "TfdsSource", "balanced_prefix", "build_source", "eval_batches", "holdout_indices", "load_arrays",
    "read_idx", "resize_image", "rrc_params", "source_labels", "steps_per_epoch", "train_iterator",
    "train_transforms", "val_indices",
]
