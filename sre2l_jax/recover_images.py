"""Writing recovered images: ImageFolder names that keep class order, atomic files."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image


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


def save_image(path: str, image: np.ndarray, jpeg_quality: int = 75) -> None:
    """uint8 HWC → PNG/JPEG by extension, written to a temp name then renamed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    tmp = f"{path}.tmp{os.getpid()}"
    fmt = "PNG" if path.endswith(".png") else "JPEG"
    with open(tmp, "wb") as f:
        pil.save(f, format=fmt, **({"quality": jpeg_quality} if fmt == "JPEG" else {}))
    os.replace(tmp, path)
