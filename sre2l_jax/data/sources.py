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
