"""Helpers shared by the tests: the tiny model and config, data writers, process launchers."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import socket
import struct
import subprocess

import jax
import numpy as np
import tiny_config as tiny_config_file
from PIL import Image

from sre2l_jax import models
from sre2l_jax.recover import objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
FASHION = "/usr/share/datasets/fashion-mnist"
TINY = {"arch": "_tiny", "width": 4, "stem": "lowres", "num_classes": 4, "channels": 1,
        "image_size": 12, "mean": [0.5], "std": [0.25]}
FOLDERS = ["a", "b", "c", "d"]  # recover's folders for the tiny teacher's class names


def tiny_config(stage: str = "recover", **options):
    """The tiny recover config (4 classes, 12×12 grayscale), unlocked for per-test edits."""
    arg = ",".join([stage] + [f"{k}={v}" for k, v in options.items()])
    c = tiny_config_file.get_config(arg)
    c.unlock()
    return c


def load_config(name: str, arg: str):
    """`configs/<name>.py`'s get_config(arg)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def randomized_teacher(seed: int = 0):
    """The tiny model with random weights and non-trivial running statistics."""
    model = models.create_model("_tiny", 4, width=4, stem="lowres")
    variables = models.init_variables(model, jax.random.key(seed), (12, 12, 1))
    rng = np.random.default_rng(seed)
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for layer in jax.tree.leaves(stats, is_leaf=lambda x: isinstance(x, dict) and "mean" in x):
        layer["mean"] = rng.normal(0, 0.3, layer["mean"].shape).astype(np.float32)
        layer["var"] = rng.uniform(0.5, 1.5, layer["var"].shape).astype(np.float32)
    return model, {"params": variables["params"], "batch_stats": stats}


def hparams(**kw) -> objective.RecoverHParams:
    """Recovery hyper-parameters for the tiny model; keywords override."""
    base = dict(iterations=10, lr=0.1, image_size=12, mean=(0.5,), std=(0.25,), alpha_bn=1.0,
                first_bn_multiplier=10.0, crop=False, flip=False, jitter=(0, 0))
    return objective.RecoverHParams(**{**base, **kw})


def numpy_forward_stats(variables, x):
    """Per-BN input (mean, biased var) of the tiny net, by hand in NumPy (eval-mode BN)."""
    p, s = variables["params"], variables["batch_stats"]
    out = []

    def conv(h, w, stride):
        kh = w.shape[0]
        pad = kh // 2
        h = np.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        n, hh, ww, _ = h.shape
        oh, ow = (hh - kh) // stride + 1, (ww - kh) // stride + 1
        y = np.zeros((n, oh, ow, w.shape[3]), np.float64)
        for i in range(kh):
            for j in range(kh):
                patch = h[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
                y += patch @ w[i, j]
        return y

    def bn(h, name_p, name_s, running):
        out.append((h.mean((0, 1, 2)), h.var((0, 1, 2)), np.asarray(running["mean"]),
                    np.asarray(running["var"])))
        return (h - running["mean"]) / np.sqrt(running["var"] + 1e-5) * name_p["scale"] + name_p["bias"]

    relu = lambda h: np.maximum(h, 0)
    h = relu(bn(conv(x, p["conv1"]["kernel"], 1), p["bn1"], None, s["bn1"]))
    for layer, stride in (("layer1_0", 1), ("layer2_0", 2)):
        lp, ls = p[layer], s[layer]
        y = relu(bn(conv(h, lp["conv1"]["kernel"], stride), lp["bn1"], None, ls["bn1"]))
        y = bn(conv(y, lp["conv2"]["kernel"], 1), lp["bn2"], None, ls["bn2"])
        if "downsample_conv" in lp:
            h = bn(conv(h, lp["downsample_conv"]["kernel"], stride), lp["downsample_bn"], None,
                   ls["downsample_bn"])
        h = relu(y + h)
    return out


def read_floats(workdir) -> dict:
    """{(class, ipc): float32 image} of a recovery run with `recover.save_float`."""
    images_dir = os.path.join(str(workdir), "recover", "images")
    with open(os.path.join(str(workdir), "recover", "manifest.json")) as f:
        entries = json.load(f)["images"]
    return {(e["class"], e["ipc"]): np.load(os.path.join(images_dir, os.path.splitext(e["file"])[0] + ".npy"))
            for e in entries}


def recover_floats(workdir, devices: int, teacher: str, **opts) -> dict:
    """Recover with the tiny config on `devices` devices; the float images of the whole workdir."""
    from sre2l_jax import recover

    recover.run(tiny_config(teacher=teacher, num_devices=devices, **opts), str(workdir))
    return read_floats(workdir)


def assert_same_images(a: dict, b: dict, n: int = 16) -> None:
    assert a.keys() == b.keys() and len(a) == n
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)


def pngs(root) -> dict:
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


def write_idx(path: str, array: np.ndarray) -> None:
    """Write `array` (uint8 or int32) as an IDX file, gzipped when `path` ends in .gz."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(payload)


def write_idx_dataset(root, n_train: int, n_test: int, size: int, seed: int) -> str:
    """A 4-class IDX data set (labels i mod 4, random pixels) in `root`; returns its path."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(str(root / f"{prefix}-images-idx3-ubyte"),
                  rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte"), (np.arange(n) % 4).astype(np.uint8))
    return str(root)


def idx_config(data_dir: str, teacher_path: str, **recover_opts):
    """The tiny recover config over a `write_idx_dataset` set, with recover.* options."""
    c = tiny_config(teacher=teacher_path)
    c.data.source, c.data.dir, c.data.class_ids = "idx", data_dir, (0, 1, 2, 3)
    for k, v in recover_opts.items():
        c.recover[k] = v
    return c


def write_synthetic(workdir, ipc: int = 4, seed: int = 0) -> None:
    """A recovered set of random 12×12 PNGs for the tiny teacher's four classes, with a manifest."""
    from sre2l_jax.stage_state import write_json_atomic

    rng = np.random.default_rng(seed)
    for folder in FOLDERS:
        os.makedirs(os.path.join(workdir, "recover", "images", folder))
        for k in range(ipc):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
                os.path.join(workdir, "recover", "images", folder, f"{k:03d}.png"))
    write_json_atomic(os.path.join(workdir, "recover", "manifest.json"), {"class_folders": FOLDERS})


def compiles(fn) -> list[str]:
    """Run fn() and return the names of the functions XLA compiled meanwhile."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("Compiling "):
                seen.append(msg.split(" ")[1])

    handler = Catch()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            fn()
    finally:
        logging.getLogger("jax").removeHandler(handler)
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(devices: int, **extra: str) -> dict:
    """The environment of a CLI subprocess whose CPU is split into `devices` devices (the package
    and tests/ importable; `extra` added last). It inherits conftest's PJRT_NPROC."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS]),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def start_processes(argv: list[str], n: int = 2, devices: int = 2, env_for=None) -> list:
    """Start `argv` as n processes × `devices` simulated CPU devices joined by jax.distributed on
    127.0.0.1 (what launch/local_cluster.sh does); env_for(pid) adds per-process variables."""
    port = free_port()
    procs = []
    for pid in range(n):
        env = cli_env(devices, SRE2L_COORDINATOR=f"127.0.0.1:{port}", SRE2L_NUM_PROCESSES=str(n),
                      SRE2L_PROCESS_ID=str(pid), **(env_for(pid) if env_for else {}))
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs
