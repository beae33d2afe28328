"""Random-access image sources: `len(src)`, `src[i] -> {'image': uint8 HxWxC, 'label': int}`.

Every source also has `class_names` and, where it is cheap, `labels` (an int array of all labels,
read without decoding images) and `channels`; `SubsetSource` and the example caps rely on `labels`.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from sre2l_jax.data.transforms import resize_image

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
TINY_VAL_ANNOTATIONS = "val_annotations.txt"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}

Record = dict[str, Any]


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (header {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(data) < offset + count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file, header promises shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_idx_file(directory: str, prefix: str, kind: str, ndim: int) -> str:
    # MNIST mirrors disagree on "-" vs "." before idxN and on gzip; accept all four spellings.
    names = [f"{prefix}-{kind}{sep}idx{ndim}-ubyte{gz}" for sep in ("-", ".") for gz in (".gz", "")]
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no IDX file in {directory}; looked for {names}")


class IdxSource:
    """An MNIST-style IDX split held in memory; `split` 'train' reads train-*, 'test' t10k-*."""

    def __init__(self, directory: str, split: str, class_names: Sequence[str] | None = None):
        if split not in _IDX_PREFIX:
            raise ValueError(f"IDX split must be one of {sorted(_IDX_PREFIX)}, got {split!r}")
        prefix = _IDX_PREFIX[split]
        images = read_idx(_find_idx_file(directory, prefix, "images", 3))
        labels = read_idx(_find_idx_file(directory, prefix, "labels", 1))
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{directory}: expected uint8 images [N,H,W] and N labels, got "
                             f"{images.dtype} {images.shape} and {labels.shape}")
        self.images = images[..., None]
        self.labels = labels.astype(np.int64)
        self.channels = 1
        if class_names is None:
            # Fashion-MNIST and MNIST use identical file names; the directory name is the only hint.
            fashion = "fashion" in os.path.abspath(directory).lower()
            class_names = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(10)]
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Record:
        return {"image": self.images[i], "label": int(self.labels[i])}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(directory: str) -> list[str]:
    """Sorted class folder names of an ImageFolder split (torchvision `find_classes`)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir())


def _walk_images(directory: str) -> list[str]:
    # torchvision walks class folders recursively, which is what picks up Tiny-ImageNet's
    # train/<wnid>/images/*.JPEG without special-casing it.
    paths = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return paths


class ImageFolderSource:
    """`root/<split>/<class>/**/<image>` (or Tiny-ImageNet's val layout), decoded lazily with PIL.

    `split=""` reads `root` itself as the folder of class folders. `class_names` fixes the label
    order (pass the train split's classes for an eval split); by default the sorted class folders.
    """

    def __init__(self, root: str, split: str = "", class_names: Sequence[str] | None = None,
                 channels: int = 3):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        directory = os.path.join(root, split) if split else root
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"image folder {directory} does not exist")
        annotations = os.path.join(directory, TINY_VAL_ANNOTATIONS)
        if os.path.isfile(annotations):
            paths, folder_of = self._tiny_val(directory, annotations)
        else:
            paths, folder_of = [], []
            for name in list_class_folders(directory):
                found = _walk_images(os.path.join(directory, name))
                paths.extend(found)
                folder_of.extend([name] * len(found))
        found_classes = sorted(set(folder_of))
        self.class_names = list(class_names) if class_names is not None else found_classes
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = [c for c in found_classes if c not in index]
        if unknown:
            raise ValueError(f"{directory}: class folders {unknown[:5]} are not among the "
                             f"{len(index)} given class names")
        if not paths:
            raise ValueError(f"{directory}: no images with extensions {IMAGE_EXTENSIONS}")
        self.paths = paths
        self.labels = np.array([index[c] for c in folder_of], dtype=np.int64)
        self.channels = channels
        self._mode = "L" if channels == 1 else "RGB"

    @staticmethod
    def _tiny_val(directory: str, annotations: str) -> tuple[list[str], list[str]]:
        paths, wnids = [], []
        with open(annotations) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2:
                    raise ValueError(f"{annotations}:{line_no}: expected 'file<TAB>wnid...'")
                paths.append(os.path.join(directory, "images", fields[0]))
                wnids.append(fields[1])
        return paths, wnids

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Record:
        return {"image": decode_image(self.paths[i], self._mode), "label": int(self.labels[i])}


def decode_image(path: str, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to uint8 HxWxC; any failure is a ValueError naming the file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return arr[..., None] if arr.ndim == 2 else arr


class TfdsSource:
    """A prepared TFDS split read through `tfds.data_source` (ArrayRecord, no TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, download: bool = False):
        import tensorflow_datasets as tfds  # slow import; only TFDS users pay for it

        data_dir = data_dir or None
        self._name, self._split, self._data_dir = name, split, data_dir
        builder = tfds.builder(name, data_dir=data_dir)
        if not download and not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it once "
                f"(needs network and TensorFlow) with:\n  python -c \"import tensorflow_datasets as "
                f"tfds; tfds.builder('{name}', data_dir={data_dir!r}, file_format='array_record')"
                f".download_and_prepare()\"\nor set data.tfds_download=True.")
        self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        features = builder.info.features
        self.class_names = list(features["label"].names)
        self.channels = features["image"].shape[-1]
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> Record:
        record = self._ds[i]
        return {"image": np.asarray(record["image"]), "label": int(record["label"])}

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            import tensorflow_datasets as tfds

            # Skipping image decoding makes a full label scan a read of the file, not a decode.
            fast = tfds.data_source(self._name, split=self._split, data_dir=self._data_dir,
                                    download=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
            self._labels = np.array([int(fast[i]["label"]) for i in range(len(fast))], np.int64)
        return self._labels


def source_labels(source: Any) -> np.ndarray:
    """All labels of `source`, without decoding images where the source knows them."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [source[i]["label"] for i in range(len(source))]
    return np.asarray(labels, dtype=np.int64)


class IndexedSource:
    """A view of `source` at `indices` with labels replaced by `labels` (already remapped)."""

    def __init__(self, source: Any, indices: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str]):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.channels = getattr(source, "channels", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Record:
        record = self.source[int(self.indices[i])]
        return {"image": record["image"], "label": int(self.labels[i])}


class ChannelAdapter:
    """`source` with its images converted to `channels`: gray replicated to RGB (exact), or RGB
    whose three channels are equal to gray (an RGB image with unequal channels is an error)."""

    def __init__(self, source: Any, channels: int):
        self.source, self.channels = source, channels
        self.class_names = source.class_names
        self.labels = getattr(source, "labels", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Record:
        record = self.source[i]
        image = np.asarray(record["image"])
        if image.shape[-1] == 1 and self.channels == 3:
            image = np.repeat(image, 3, axis=-1)
        elif image.shape[-1] == 3 and self.channels == 1:
            if not (np.array_equal(image[..., 0], image[..., 1])
                    and np.array_equal(image[..., 0], image[..., 2])):
                raise ValueError(f"record {i} is a colour image; only gray images stored as RGB convert "
                                 "to 1 channel exactly")
            image = image[..., :1]
        return {"image": image, "label": record["label"]}


class SubsetSource(IndexedSource):
    """Keep the classes `class_ids` (in that order) and relabel them 0..len(class_ids)-1."""

    def __init__(self, source: Any, class_ids: Sequence[int]):
        class_ids = [int(c) for c in class_ids]
        num = len(source.class_names)
        if len(set(class_ids)) != len(class_ids) or not all(0 <= c < num for c in class_ids):
            raise ValueError(f"class_ids must be distinct and in [0, {num}), got {class_ids}")
        lut = np.full(num, -1, dtype=np.int64)
        lut[class_ids] = np.arange(len(class_ids))
        new_labels = lut[source_labels(source)]
        keep = np.flatnonzero(new_labels >= 0)
        super().__init__(source, keep, new_labels[keep],
                         [source.class_names[c] for c in class_ids])


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


def load_arrays(source: Any, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a small source fully: (uint8 images [N,H,W,C], int32 labels [N]), resized if asked."""
    images, labels = [], []
    for i in range(len(source)):
        record = source[i]
        image = np.asarray(record["image"])
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = resize_image(image, (image_size, image_size))
        images.append(image)
        labels.append(record["label"])
    if not images:
        raise ValueError("load_arrays: the source is empty")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"load_arrays: images differ in shape {sorted(shapes)[:3]}; "
                         "pass image_size to resize them")
    return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int32)
