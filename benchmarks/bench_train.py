"""Training-step workers of bench.py: the squeeze step and the student step, JAX vs PyTorch.

squeeze: one SGD step (momentum 0.9, weight decay on every parameter, CE) of the low-res-stem
  ResNet-18 in training mode, as squeeze.py runs it (`squeeze.train_step` with the package's
  compiler options, the batch split over `cpu_devices` simulated devices as config.cpu_devices
  does) and as the authors' train.py does in PyTorch (torchvision resnet18 with the 3×3
  stem and no max-pool, `optimizer.zero_grad(); loss.backward(); optimizer.step()`).
student: one soft-label step of the default recipe (EDC's): the frozen teacher's logits on the
  batch (eval mode, no grad), MSE to them + 0.025·CE, AdamW, EMA 0.99 of the parameters — JAX:
  `student.steps.online_step` (per-image RandomResizedCrop, flip and CutMix inside the step);
  PyTorch: EDC's loop body on a batch that is already cropped (their DataLoader workers do the
  crops), CutMix and the EMA update in the step. With `lanes` > 1, JAX trains that many students
  at once, one per simulated device, as validate does (`parallel.lane_meshes`); ms/step is then
  per student step (the time of one step on every lane, divided by the lanes).
loops: the real squeeze and validate loops (data, logging, checkpoints) in steps/s, against the
  bare step above, to show what the loop adds.
Every case: a warm-up step, then `iters` timed steps; the median of `repeats` is kept.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
from bench_machine import max_rss_mib


def _timed(step, iters: int, repeats: int) -> float:
    """ms per step: median over repeats of the mean of `iters` calls (after one warm-up)."""
    step()
    times = []
    for _ in range(repeats):
        ts = time.perf_counter()
        for _ in range(iters):
            step()
        times.append((time.perf_counter() - ts) / iters)
    return 1000 * float(np.median(times))


# ---------------------------------------------------------------- JAX

def jax_train(spec: dict) -> dict:
    from sre2l_jax import parallel

    parallel.use_cpu_devices(spec.get("cpu_devices", 1))
    import jax
    import jax.numpy as jnp

    from sre2l_jax import optim, squeeze
    from sre2l_jax.models import create_model, init_variables
    from sre2l_jax.train_state import TrainState

    w, res, c, b = spec["width"], spec["res"], spec["channels"], spec["batch"]
    model = create_model("resnet18", 10, w, "lowres")
    tx = optim.make_optimizer("sgd", lambda _: 0.1, momentum=0.9, weight_decay=5e-4)
    v = init_variables(model, jax.random.key(0), (res, res, c))
    state = TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]))
    rng = np.random.default_rng(0)
    mesh = parallel.make_mesh(batch=b)
    repl = parallel.replicated(mesh)
    batch = parallel.shard_host_identical(mesh, rng.normal(size=(b, res, res, c)).astype(np.float32))
    batch = {"image": batch, "label": parallel.shard_host_identical(mesh, np.arange(b) % 10)}
    options = parallel.training_compiler_options() if spec.get("options", True) else None
    fn = jax.jit(functools.partial(squeeze.train_step, model=model, tx=tx, label_smoothing=0.0),
                 in_shardings=(repl, parallel.batch_sharding(mesh)), out_shardings=(repl, repl),
                 donate_argnums=(0,), compiler_options=options)
    box = [jax.device_put(state, repl)]

    def step():
        box[0], m = fn(box[0], batch)
        jax.block_until_ready(m)

    return {"ms_per_step": _timed(step, spec["iters"], spec["repeats"]), "rss_peak_mib": max_rss_mib(),
            "device": str(jax.devices()[0]), "devices": mesh.devices.size}


def jax_student(spec: dict) -> dict:
    from sre2l_jax import parallel

    lanes = spec.get("lanes", 1)
    parallel.use_cpu_devices(lanes)
    import jax
    import jax.numpy as jnp

    from sre2l_jax import optim
    from sre2l_jax.models import create_model, init_variables
    from sre2l_jax.student import plans, steps
    from sre2l_jax.train_state import TrainState

    w, res, c, b = spec["width"], spec["res"], spec["channels"], spec["batch"]
    model = create_model("resnet18", 10, w, "lowres")
    teacher = init_variables(model, jax.random.key(0), (res, res, c))
    v = init_variables(model, jax.random.key(1), (res, res, c))
    tx = optim.make_optimizer("adamw", lambda _: 1e-3, weight_decay=0.01)
    spec_aug = plans.AugSpec(res, (0.5,) * c, (0.25,) * c, mix="cutmix")
    recipe = steps.Recipe(model, model, tx, spec_aug, 20.0, False, loss="mse_ce", ema=0.99)
    state = TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]),
                       ema=jax.tree.map(jnp.copy, v["params"]))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, res, res, c), dtype=np.uint8))
    labels = jnp.arange(b) % 10
    ids, soft = jnp.asarray([0, 0, 0], jnp.int32), jnp.asarray(True)
    fn = jax.jit(functools.partial(steps.online_step, recipe=recipe), donate_argnums=(0,),
                 compiler_options=parallel.training_compiler_options())
    # One student per device (committed inputs pick the device), dispatched in turn.
    per_lane = [jax.device_put((jax.tree.map(jnp.copy, state), teacher, images, labels, ids, soft), d)
                for d in jax.devices()[:lanes]]
    boxes = [list(a) for a in per_lane]

    def step():
        out = []
        for box in boxes:
            box[0], m = fn(*box)
            out.append(m)
        jax.block_until_ready(out)

    ms = _timed(step, spec["iters"], spec["repeats"]) / lanes
    return {"ms_per_step": ms, "rss_peak_mib": max_rss_mib(), "device": str(jax.devices()[0]),
            "lanes": lanes}


def _fashion_config(stage: str, edits: dict):
    import importlib.util

    from bench_machine import ROOT

    spec = importlib.util.spec_from_file_location("fm", os.path.join(ROOT, "configs", "fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(stage)
    c.unlock()
    for key, value in edits.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def _random_synthetic_set(workdir: str, ipc: int) -> None:
    from sre2l_jax.data.sources import FASHION_MNIST_CLASSES
    from sre2l_jax.formats import images as image_files

    folders = image_files.class_folder_names(FASHION_MNIST_CLASSES)
    rng = np.random.default_rng(0)
    for folder in folders:
        for k in range(ipc):
            path = os.path.join(workdir, "recover", "images", image_files.image_file(folder, k, ipc, "png"))
            image_files.save_image(path, rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))
    image_files.write_manifest(os.path.join(workdir, "recover"), {"class_folders": folders})


def jax_loops(spec: dict) -> dict:
    """steps/s of the real squeeze and validate loops at the Fashion-MNIST default sizes (two
    student runs, so that validate's lanes have a run each)."""
    import json
    import tempfile

    from sre2l_jax import parallel

    parallel.use_cpu_devices(spec.get("cpu_devices", 1))
    from sre2l_jax import squeeze, validate

    tmp = tempfile.mkdtemp(prefix="bench_loops_")
    squeeze.run(_fashion_config("squeeze", {"squeeze.max_steps": spec["squeeze_steps"]}), tmp)
    _random_synthetic_set(tmp, 10)
    validate.run(_fashion_config("validate", {
        "student.epochs": spec["student_epochs"], "student.eval_every_epochs": spec["student_epochs"],
        "recover.teacher": os.path.join(tmp, "squeeze", "model"),
        "validate.baselines": ("synthetic_hard",)}), tmp)
    return {"squeeze_steps_per_s": _loop_rate(os.path.join(tmp, "squeeze", "metrics.jsonl"), json),
            "validate_steps_per_s": _loop_rate(os.path.join(tmp, "validate", "metrics.jsonl"), json)}


def _loop_rate(path: str, json) -> float:
    """Steps/s between the first and the last logged step (every `log_every_steps`, 50: the
    first logged step has paid for compilation)."""
    with open(path) as f:
        rows = [r for r in map(json.loads, f) if "loss" in r and "eval_top1" not in r]
    a, b = rows[0], rows[-1]
    return (b["step"] - a["step"]) / (b["time"] - a["time"])


# ---------------------------------------------------------------- PyTorch

def _torch_resnet18(width: int, channels: int):
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    net.inplanes = width  # rebuild the layers at the width (torchvision hard-codes 64)
    net.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
    net.bn1, net.maxpool = nn.BatchNorm2d(width), nn.Identity()
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    net.fc = nn.Linear(8 * width, 10)
    return net


def torch_train(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    torch.manual_seed(0)
    w, res, c, b = spec["width"], spec["res"], spec["channels"], spec["batch"]
    model = _torch_resnet18(w, c).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(b, c, res, res), torch.arange(b) % 10
    crit = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return {"ms_per_step": _timed(step, spec["iters"], spec["repeats"]), "rss_peak_mib": max_rss_mib(),
            "threads": torch.get_num_threads()}


def torch_student(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    torch.manual_seed(0)
    w, res, c, b = spec["width"], spec["res"], spec["channels"], spec["batch"]
    teacher, student = _torch_resnet18(w, c).eval(), _torch_resnet18(w, c).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    ema = [p.detach().clone() for p in student.parameters()]
    x, y = torch.randn(b, c, res, res), torch.arange(b) % 10

    def step():
        lam = float(np.random.beta(1.0, 1.0))  # CutMix: one box, one partner permutation per batch
        perm = torch.randperm(b)
        cut = int(res * np.sqrt(1 - lam))
        cy, cx = np.random.randint(res), np.random.randint(res)
        y1, y2 = np.clip(cy - cut // 2, 0, res), np.clip(cy + cut // 2, 0, res)
        x1, x2 = np.clip(cx - cut // 2, 0, res), np.clip(cx + cut // 2, 0, res)
        xm = x.clone()
        xm[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
        with torch.no_grad():
            soft = teacher(xm)
        out = student(xm)
        loss = F.mse_loss(out, soft) + 0.025 * F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(student.parameters()), 0.01)

    return {"ms_per_step": _timed(step, spec["iters"], spec["repeats"]), "rss_peak_mib": max_rss_mib(),
            "threads": torch.get_num_threads()}


WORKERS = {"jax_train": jax_train, "jax_student_step": jax_student, "jax_loops": jax_loops,
           "torch_train": torch_train, "torch_student": torch_student}
