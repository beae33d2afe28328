"""The recovered set on disk: an ImageFolder (`<class folder>/<ipc>.png`) plus `manifest.json`.

Recovery writes it, relabel / validate / report read it; this module owns the layout:
- class folders sort in class order (what ImageFolder readers assume), see `class_folder_names`;
- one file per (class, ipc), zero-padded so that files sort by ipc; optional float32 `.npy` twins
  (`recover.save_float`) hold the last iterate in normalized space, losslessly;
- `manifest.json` beside `images/` records the class folders, the config and one entry per image.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from sre2l_jax.data import mosaics, sources
from sre2l_jax.stage_state import atomic_path, read_json, write_json_atomic

MANIFEST = "manifest.json"


def default_dir(config, workdir: str) -> str:
    """The synthetic set relabel and validate read: `relabel.images` or this workdir's recovery."""
    return config.relabel.images or os.path.join(workdir, "recover", "images")


def class_folder_names(class_names: list[str]) -> list[str]:
    """Folder per class such that sorted(folders) is class order (what ImageFolder readers assume).

    Names that are unique, filesystem-safe and already sorted (ImageNet wnids) stay as they are;
    otherwise the zero-padded class id leads (`003_Dress`); numeric names become padded ids.
    """
    width = max(3, len(str(len(class_names) - 1)))
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", str(n)).strip("_") or str(i)
            for i, n in enumerate(class_names)]
    if all(n.isdigit() for n in safe):
        return [f"{int(n):0{width}d}" for n in safe]
    if len(set(safe)) == len(safe) and safe == sorted(safe):
        return safe
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(safe)]


def image_file(folder: str, ipc_index: int, ipc: int, image_format: str) -> str:
    """`<folder>/<ipc index>.<ext>`, relative to the images directory."""
    width = max(3, len(str(ipc - 1)))
    return os.path.join(folder, f"{ipc_index:0{width}d}.{'png' if image_format == 'png' else 'jpg'}")


def save_image(path: str, image: np.ndarray, jpeg_quality: int = 75) -> None:
    """uint8 HWC → PNG/JPEG by extension, atomically."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    fmt = "PNG" if path.endswith(".png") else "JPEG"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pil.save(f, format=fmt, **({"quality": jpeg_quality} if fmt == "JPEG" else {}))


def float_path(image_path: str) -> str:
    return os.path.splitext(image_path)[0] + ".npy"


def save_float(image_path: str, image: np.ndarray) -> None:
    """The float32 image in normalized space beside its PNG/JPEG (`<ipc>.npy`), atomically."""
    with atomic_path(float_path(image_path)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(image, np.float32))


def write_manifest(stage_dir: str, manifest: dict) -> None:
    write_json_atomic(os.path.join(stage_dir, MANIFEST), manifest)


def read_manifest(images_dir: str) -> dict | None:
    return read_json(os.path.join(os.path.dirname(os.path.normpath(images_dir)), MANIFEST))


def class_folders(images_dir: str, class_names: list[str]) -> list[str]:
    """The folder of each class id: from recover's manifest, or (images from elsewhere) the names
    recover would have chosen for the teacher's classes."""
    folders = (read_manifest(images_dir) or {}).get("class_folders")
    return list(folders) if folders else class_folder_names(list(class_names))


def synthetic_source(images_dir: str, class_names: list[str], channels: int):
    """(random-access source, class folders) of a synthetic set, in class order; every class
    must have images. Images are decoded when read, never all at once."""
    has_files = os.path.isdir(images_dir) and any(files for _, _, files in os.walk(images_dir))
    if not has_files:
        raise FileNotFoundError(f"no synthetic images in {images_dir}; run the recover stage first "
                                "or point relabel.images at an ImageFolder of recovered images")
    folders = class_folders(images_dir, class_names)
    if len(folders) != len(class_names):
        raise ValueError(f"{images_dir}: {len(folders)} class folders are expected but the data has "
                         f"{len(class_names)} classes")
    source = sources.ImageFolderSource(images_dir, "", class_names=folders, channels=channels)
    missing = [folders[c] for c in np.flatnonzero(np.bincount(source.labels, minlength=len(folders)) == 0)]
    if missing:
        raise ValueError(f"{images_dir}: no synthetic images for {len(missing)} classes "
                         f"({missing[:5]}...); finish the recover stage for every class")
    return source, folders


def read_set(images_dir: str, class_names: list[str], channels: int,
             image_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images [N,H,W,C], int32 class ids [N], class folders) of a synthetic set, decoded
    into memory (for grids and reports; students stream it)."""
    source, folders = synthetic_source(images_dir, class_names, channels)
    images, labels = sources.load_arrays(source, image_size)
    return images, labels, folders


def load_synthetic(config, workdir: str, teacher_meta: dict):
    """The synthetic set relabel and validate train on, as a source in the teacher's class order
    (each stored image's f × f cells under `student.multi_formation` = f, its 8 / b bit planes
    under `student.bit_depth` = b)."""
    names = teacher_meta.get("class_names") or [str(i) for i in range(config.data.num_classes)]
    images_dir = default_dir(config, workdir)
    check_bit_depth(read_manifest(images_dir), config.student.bit_depth, images_dir)
    source = synthetic_source(images_dir, list(names), config.data.channels)[0]
    return mosaics.decoded(source, config.student.multi_formation, config.data.image_size,
                           config.student.bit_depth)


def check_bit_depth(manifest: dict | None, bits: int, images_dir: str) -> None:
    """Refuse to read a recovered set in another bit depth than it was packed in (recover's
    manifest says; images from elsewhere carry no manifest and are taken as they are)."""
    recover = ((manifest or {}).get("config") or {}).get("recover")
    if recover is None:
        return
    packed = recover.get("rded_bits", 8) if recover.get("method") == "rded" else 8
    if packed != bits:
        raise ValueError(f"{images_dir} holds images packed at {packed} bits per image "
                         f"(recover.rded_bits={packed}) but student.bit_depth={bits}: set "
                         f"--config.student.bit_depth={packed}, or recover again with rded_bits={bits}")


def grid(images: np.ndarray, labels: np.ndarray, per_class: int = 10) -> np.ndarray:
    """uint8 HWC mosaic: one row per class, up to `per_class` images each (black where fewer)."""
    classes = sorted(set(labels.tolist()))
    h, w, c = images.shape[1:]
    out = np.zeros((len(classes) * h, per_class * w, c), np.uint8)
    for r, cls in enumerate(classes):
        for j, image in enumerate(images[labels == cls][:per_class]):
            out[r * h:(r + 1) * h, j * w:(j + 1) * w] = image
    return out
