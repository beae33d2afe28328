"""Import torchvision ResNet weights (a `.pth` state dict) as a model checkpoint.

SRe²L's published teachers are torchvision ResNets: the stock ones for ImageNet, and for
Tiny-ImageNet/CIFAR the "modified" ones whose conv1 is a 3×3 stride-1 conv and whose max-pool is
an Identity. `models.py` mirrors torchvision's names, so conversion is a renaming plus a layout
change (OIHW → HWIO convs, transposed fc). The architecture is inferred from the weights alone;
the one thing a state dict cannot show is whether the max-pool was removed, which is why the
`lowres` stem stands for "3×3 conv1 and no max-pool" together.

torch is an optional extra: it is imported only inside `import_torchvision`, never at module
import, so the rest of the package runs without it.

    python -m sre2l_jax.torch_import --pth=resnet18.pth --out=workdirs/teacher --image_size=224
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import checkpoint, models

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (bottleneck?, blocks per stage) → arch; the four SRe²L uses, as torchvision defines them.
_ARCH_BY_BLOCKS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
}
_STEM_BY_KERNEL = {7: "imagenet", 3: "lowres"}
_STEM_WORDS = {"imagenet": "7×7 imagenet", "lowres": "3×3 lowres"}
# Wrappers that prefix every key: DataParallel/DDP, and torch.compile's OptimizedModule.
_KEY_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("state_dict", "model")
_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "bias"): "bias",
                  ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
                  ("batch_stats", "var"): "running_var"}


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; .float() first because NumPy has no bfloat16
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """The flat name → tensor mapping inside a checkpoint, a training container or a pickled model."""
    for _ in range(4):  # containers nest, e.g. {'model': {'state_dict': ...}}
        if not isinstance(obj, Mapping) and callable(getattr(obj, "state_dict", None)):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(obj)}")
        if any(_is_array(v) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj), None)
        if inner is None:
            raise ValueError("no state dict found: the checkpoint has neither tensors nor one of the "
                             f"keys {_CONTAINER_KEYS}; top-level keys: {sorted(map(str, obj))[:20]}")
        obj = inner
    raise ValueError("no state dict found: containers nested too deeply")


def _clean(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = str(key)
        while name.startswith(_KEY_PREFIXES):
            name = name.split(".", 1)[1]
        if name.endswith("num_batches_tracked"):  # a step counter, not a weight
            continue
        if name in out:
            raise ValueError(f"two entries map to {name!r} once wrapper prefixes are stripped")
        out[name] = _to_numpy(value)
    return out


def _infer(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """arch, width, stem, num_classes, channels of a torchvision ResNet state dict."""
    missing = [k for k in ("conv1.weight", "fc.weight") if k not in sd]
    if missing:
        raise ValueError(f"not a torchvision ResNet state dict: missing {missing}; "
                         f"first keys: {sorted(sd)[:10]}")
    conv1, fc = sd["conv1.weight"], sd["fc.weight"]
    if conv1.ndim != 4 or conv1.shape[2] != conv1.shape[3] or conv1.shape[2] not in _STEM_BY_KERNEL:
        raise ValueError(f"conv1.weight has shape {conv1.shape}; expected (width, channels, k, k) "
                         "with k = 7 (imagenet stem) or 3 (lowres stem)")
    if fc.ndim != 2:
        raise ValueError(f"fc.weight has shape {fc.shape}; expected (num_classes, features)")

    blocks: dict[int, int] = {}
    for name in sd:
        m = re.match(r"layer(\d+)\.(\d+)\.", name)
        if m:
            stage, block = int(m[1]), int(m[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    sizes = tuple(blocks.get(i, 0) for i in range(1, max(blocks, default=0) + 1))
    bottleneck = "layer1.0.conv3.weight" in sd
    arch = _ARCH_BY_BLOCKS.get((bottleneck, sizes))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(f"{kind} blocks per stage {sizes} match no known ResNet; known: "
                         + ", ".join(f"{a} {'bottleneck' if b else 'basic'} {s}"
                                     for (b, s), a in _ARCH_BY_BLOCKS.items()))
    return {"arch": arch, "width": int(conv1.shape[0]), "stem": _STEM_BY_KERNEL[conv1.shape[2]],
            "num_classes": int(fc.shape[0]), "channels": int(conv1.shape[1])}


def _torch_module(path: tuple[str, ...]) -> str:
    """('layer2_0', 'downsample_bn') → 'layer2.0.downsample.1'."""
    names = []
    for part in path:
        m = re.fullmatch(r"layer(\d+)_(\d+)", part)
        names.append(f"layer{m[1]}.{m[2]}" if m else
                     {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part))
    return ".".join(names)


def _to_flax_layout(x: np.ndarray, flax_ndim: int) -> np.ndarray:
    if flax_ndim == 4:
        x = x.transpose(2, 3, 1, 0) if x.ndim == 4 else x  # OIHW → HWIO
    elif flax_ndim == 2 and x.ndim == 2:
        x = x.T  # torch Linear is (out, in), flax Dense (in, out)
    return np.ascontiguousarray(x, dtype=np.float32)


def convert_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict, dict]:
    """Convert a torchvision ResNet state dict to (`{'params','batch_stats'}`, info).

    Accepts tensors or arrays, `{'state_dict': ...}` / `{'model': ...}` containers and
    `module.`-prefixed keys. info has arch, width, stem, num_classes, channels. Raises ValueError
    listing every missing, unexpected or mis-shaped key.
    """
    sd = _clean(_unwrap(state_dict))
    info = _infer(sd)
    model = models.create_model(info["arch"], info["num_classes"], info["width"], info["stem"])
    # The model's own (abstract) init is the template, so the tree matches `init_variables` exactly
    # and no layer list is duplicated here; eval_shape traces without computing anything.
    template = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, 32, 32, info["channels"]), jnp.float32))
    used: set[str] = set()
    missing: list[str] = []
    bad_shape: list[str] = []

    def fill(tree: Mapping[str, Any], collection: str, path: tuple[str, ...]) -> dict:
        out = {}
        for key, value in tree.items():  # keeps flax's call order, which jax.tree.map would sort
            if isinstance(value, Mapping):
                out[key] = fill(value, collection, (*path, key))
                continue
            name = f"{_torch_module(path)}.{_LEAF_TO_TORCH[(collection, key)]}"
            if name not in sd:
                missing.append(name)
                continue
            used.add(name)
            array = _to_flax_layout(sd[name], len(value.shape))
            if array.shape != tuple(value.shape):
                bad_shape.append(f"{name}: {sd[name].shape} (expected "
                                 f"{_expected_torch_shape(tuple(value.shape))})")
            out[key] = array
        return out

    variables = {c: fill(template[c], c, ()) for c in ("params", "batch_stats")}
    unexpected = sorted(set(sd) - used)
    problems = [f"{what}: {items}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)) if items]
    if problems:
        raise ValueError(f"state dict does not fit torchvision {info['arch']} (stem={info['stem']}, "
                         f"width={info['width']}): " + "; ".join(problems))
    return variables, info


def _expected_torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return flax_shape[::-1]


def _load_pth(path: str) -> Any:
    import torch  # the optional extra: imported here so the package runs without it

    # torchvision's reference train.py stores its argparse Namespace next to the weights;
    # allowing that one harmless class keeps such checkpoints on the safe loader.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        warnings.warn(f"{path} is not loadable with weights_only=True ({str(e).splitlines()[0]}); "
                      "falling back to full unpickling, which can run arbitrary code: only do "
                      "this with checkpoints you trust", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)


def _check(name: str, found: Any, expected: Any, describe: Callable[[Any], str]) -> None:
    if expected is not None and found != expected:
        raise ValueError(f"weights have {describe(found)} but the config says {name}={expected!r}")


def import_torchvision(pth_path: str, out_dir: str, *, expected_num_classes: int | None = None,
                       expected_stem: str | None = None, expected_arch: str | None = None,
                       expected_width: int | None = None, expected_channels: int | None = None,
                       image_size: int = 224, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None,
                       class_names: Sequence[str] | None = None) -> dict:
    """Convert a torchvision ResNet `.pth` and save it as a model checkpoint in `out_dir`.

    Every `expected_*` that is not None must agree with what the weights show, so a config that
    describes a different network fails here instead of producing garbage in recovery.
    mean/std default to ImageNet's for 3-channel weights and must be given otherwise.
    Returns the saved metadata.
    """
    variables, info = convert_state_dict(_load_pth(pth_path))
    _check("stem", info["stem"], expected_stem,
           lambda s: f"a {_STEM_WORDS[s]} stem (stem={s!r})")
    _check("arch", info["arch"], expected_arch, lambda a: f"the {a} block layout")
    _check("num_classes", info["num_classes"], expected_num_classes,
           lambda n: f"{n} classes (fc.weight)")
    _check("width", info["width"], expected_width, lambda w: f"{w} stem channels (conv1.weight)")
    _check("channels", info["channels"], expected_channels,
           lambda c: f"{c}-channel input (conv1.weight)")

    channels = info["channels"]
    if mean is None and std is None and channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if mean is None or std is None or len(mean) != channels or len(std) != channels:
        raise ValueError(f"the weights take {channels}-channel images; pass mean and std with "
                         f"{channels} values each (got mean={mean}, std={std})")
    if class_names is not None and len(class_names) != info["num_classes"]:
        raise ValueError(f"{len(class_names)} class names for {info['num_classes']} classes")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")

    meta = {**info, "image_size": int(image_size), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "class_names": None if class_names is None else [str(c) for c in class_names],
            "top1": None, "source": os.path.abspath(pth_path)}
    checkpoint.save_model(out_dir, variables, meta)
    return meta


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sre2l_jax.torch_import",
                                description="Import a torchvision ResNet .pth as a model checkpoint.")
    p.add_argument("--pth", required=True, help="torchvision ResNet state dict (.pth)")
    p.add_argument("--out", required=True, help="model checkpoint directory to write")
    p.add_argument("--image_size", type=int, default=224, help="input resolution the model expects")
    p.add_argument("--mean", type=_floats, default=None, help="comma-separated per-channel mean")
    p.add_argument("--std", type=_floats, default=None, help="comma-separated per-channel std")
    p.add_argument("--class_names", default=None, help="text file, one class name per line")
    p.add_argument("--num_classes", type=int, default=None, help="fail unless the weights agree")
    p.add_argument("--stem", choices=sorted(_STEM_WORDS), default=None,
                   help="fail unless the weights agree")
    p.add_argument("--arch", choices=sorted(set(_ARCH_BY_BLOCKS.values())), default=None,
                   help="fail unless the weights agree")
    args = p.parse_args(argv)
    names = None
    if args.class_names:
        with open(args.class_names) as f:
            names = [line.strip() for line in f if line.strip()]
    meta = import_torchvision(args.pth, args.out, expected_num_classes=args.num_classes,
                              expected_stem=args.stem, expected_arch=args.arch,
                              image_size=args.image_size, mean=args.mean, std=args.std,
                              class_names=names)
    print(f"saved {meta['arch']} (stem={meta['stem']}, width={meta['width']}, "
          f"{meta['num_classes']} classes, {meta['channels']} channels) to {os.path.abspath(args.out)}")
    return meta


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError) as e:  # a user's mistake, not a bug: no traceback
        raise SystemExit(f"error: {e}") from None
