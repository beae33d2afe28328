"""JAX workers of bench.py; each runs in its own process and returns one dict.

recover: `recover.objective.run_iterations` (crop+flip, roll, forward with per-BN input statistics,
  CE + α_BN·R_BN, gradient to the images, Adam, clip) over k iterations inside one jit call.
student: `student.steps.online_step` (teacher forward + student step) vs `student.steps.stored_step`.
pipeline: `pipeline.train_iterator` for Fashion-MNIST vs the squeeze `train_step` at that config.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_machine import IMAGENET_MEAN, IMAGENET_STD, max_rss_mib, recover_setup


def random_variables(model, image_shape, seed: int = 0) -> dict:
    """`{'params', 'batch_stats'}` like `models.init_variables`, drawn with NumPy.

    `init_variables` jit-compiles `model.init` (~7 s per process on 2 cores); timing does not
    depend on the values, so the workers draw kaiming-normal kernels (fan-out, as
    models.conv_init), BN scale 1 / bias 0, running mean 0 / var 1, from eval_shape's shapes.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_out = s.shape[-1] * int(np.prod(s.shape[:-2]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_out), s.shape).astype(np.float32))
        return jnp.ones(s.shape, s.dtype) if name in ("scale", "var") else jnp.zeros(s.shape, s.dtype)

    return {k: jax.tree_util.tree_map_with_path(leaf, shapes[k]) for k in ("params", "batch_stats")}


def _maybe_patch(spec: dict) -> None:
    # sre2l_jax/conv.py: "JAX" rows measure XLA's stock conv gradient, "canonical_conv" rows the
    # canonical input gradient, "winograd" rows the package's CPU default.
    modes = {"canonical_conv": "canonical", "winograd": "winograd"}
    os.environ["SRE2L_CONV"] = modes.get(spec.get("patch"), "stock")


def _device_memory() -> dict | None:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    stats = dev.memory_stats() or {}
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def _temp_mib(compiled) -> float | None:
    """XLA's buffer assignment: the step's temporary buffers (activations, transforms), in MiB."""
    ma = compiled.memory_analysis()
    return ma.temp_size_in_bytes / 2**20 if ma is not None else None


def _flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):  # older jax returned one dict per computation
        ca = ca[0] if ca else {}
    return float(ca.get("flops", 0.0)) or None


def recover(spec: dict) -> dict:
    from sre2l_jax.models import create_model
    from sre2l_jax.recover import objective

    _maybe_patch(spec)
    stem, res, batch = spec["stem"], spec["res"], spec["batch"]
    k, nbatch = spec["iters"], spec.get("nbatch", 1)
    dtype = jnp.dtype(spec.get("dtype", "float32"))
    num_classes, alpha_bn, lr, jitter = recover_setup(stem, res)
    model = create_model(spec.get("arch", "resnet18"), num_classes, spec.get("width", 64), stem, dtype)
    variables = random_variables(model, (res, res, 3))
    hp = objective.RecoverHParams(iterations=1000, lr=lr, image_size=res, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, alpha_bn=alpha_bn, jitter=jitter)
    tx = objective.optimizer(hp)

    def one(x, opt_state, labels, key, t0, t1, variables):
        return objective.run_iterations(x, opt_state, labels, key, t0, t1, models=(model,),
                                        variables=(variables,), hp=hp)

    fn = one
    shape = (batch, res, res, 3)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(batch, dtype=jnp.int32) % num_classes
    key = jax.random.key(2)
    if nbatch > 1:  # several independent batches per call, as recover.py maps slots per device
        fn = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None))
        x = jax.random.normal(jax.random.key(1), (nbatch, *shape))
        labels = jnp.stack([labels] * nbatch)
        key = jax.random.split(key, nbatch)
    opt_state = jax.vmap(tx.init)(x) if nbatch > 1 else tx.init(x)
    rss_setup = max_rss_mib()
    t0, t1 = np.int32(0), np.int32(1)

    tc = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(x, opt_state, labels, key, t0, t1,
                                                        variables).compile()
    compile_s = time.perf_counter() - tc
    rss_compiled = max_rss_mib()  # the compiler's own peak shows here, before any step ran
    flops = _flops(compiled)  # the while-loop body is counted once: FLOPs of one iteration

    warm = spec.get("warmup", 1)  # 0: a call that runs no iteration (allocations, thread pools)
    x, opt_state, m = compiled(x, opt_state, labels, key, np.int32(0), np.int32(warm), variables)
    jax.block_until_ready((x, m))
    times = []
    for r in range(spec.get("repeats", 1)):
        a = np.int32(warm + r * k)
        ts = time.perf_counter()
        x, opt_state, m = compiled(x, opt_state, labels, key, a, np.int32(a + k), variables)
        jax.block_until_ready((x, m))
        times.append(time.perf_counter() - ts)
    best = min(times)
    ms_iter = 1000.0 * best / k
    per_batch_flops = flops / nbatch if flops else None
    repeat_diff = None
    if spec.get("check_repeat"):  # the same call twice from the same state: bitwise equal?
        start = jax.random.normal(jax.random.key(1), x.shape)

        def once():
            xs = jnp.array(start)
            state = jax.vmap(tx.init)(xs) if nbatch > 1 else tx.init(xs)
            return np.asarray(compiled(xs, state, labels, key, np.int32(0), np.int32(k), variables)[0])

        repeat_diff = float(np.max(np.abs(once() - once())))
    return {
        "ms_per_iter": ms_iter, "ms_per_batch_iter": ms_iter / nbatch,
        "images_iters_per_s": nbatch * batch * k / best,
        "flops_per_iter": per_batch_flops,
        "gflops_per_s": (flops * k / best / 1e9) if flops else None,
        "compile_s": compile_s, "times_s": times, "loss": float(m["loss"].mean()),
        "finite": bool(np.isfinite(np.asarray(x)).all()),
        "rss_setup_mib": rss_setup, "rss_compiled_mib": rss_compiled, "rss_peak_mib": max_rss_mib(),
        "xla_temp_mib": _temp_mib(compiled), "device_memory": _device_memory(),
        "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
        "repeat_max_abs_diff": repeat_diff,
    }


def _student_parts(spec: dict):
    from sre2l_jax import optim
    from sre2l_jax.models import create_model
    from sre2l_jax.student import plans, steps
    from sre2l_jax.train_state import TrainState

    res, batch, width = spec["res"], spec["batch"], spec.get("width", 64)
    num_classes = spec.get("num_classes", 100)
    model = create_model("resnet18", num_classes, width, "lowres")
    teacher_vars = random_variables(model, (res, res, 3), seed=0)
    student_vars = random_variables(model, (res, res, 3), seed=1)
    tx = optim.make_optimizer("sgd", optim.cosine_with_warmup(0.2, 100, 10, 5), momentum=0.9,
                              weight_decay=1e-4)
    spec_aug = plans.AugSpec(res, IMAGENET_MEAN, IMAGENET_STD, mix=spec.get("mix", "none"))
    recipe = steps.Recipe(student=model, teacher=model, tx=tx, spec=spec_aug, tau=20.0,
                            tau2_factor=True)
    state = TrainState(jnp.zeros((), jnp.int32), student_vars["params"],
                       student_vars["batch_stats"], tx.init(student_vars["params"]))
    rng = np.random.default_rng(0)
    n = 10 * batch
    images = jnp.asarray(rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8))
    labels = jnp.asarray(np.arange(n, dtype=np.int32) % num_classes)
    return steps, recipe, state, teacher_vars, images, labels


def student_steps(spec: dict) -> dict:
    """ms/step of the online-teacher step and the stored-label step (student only)."""
    _maybe_patch(spec)
    student, recipe, state, teacher_vars, images, labels = _student_parts(spec)  # student: the steps module
    batch, k = spec["batch"], spec["iters"]
    images, labels = images[:batch], labels[:batch]  # one batch, as the student pipeline feeds it
    ids = jnp.asarray([0, 0, 0], jnp.int32)
    online = jax.jit(functools.partial(student.online_step, recipe=recipe), donate_argnums=(0,))
    stored = jax.jit(functools.partial(student.stored_step, recipe=recipe), donate_argnums=(0,))
    label = jax.jit(functools.partial(student.label_batch, recipe=recipe))
    plan, targets = label(teacher_vars, images, ids)
    soft = jnp.asarray(True)
    out = {}
    for name, fn, args in (("online", online, (teacher_vars, images, labels, ids, soft)),
                           ("stored", stored, (images, labels, plan, targets)),
                           ("teacher_only", label, None)):
        if args is None:
            compiled = fn.lower(teacher_vars, images, ids).compile()
            call = lambda s, c=compiled: (s, c(teacher_vars, images, ids))
        else:
            compiled = fn.lower(state, *args).compile()
            call = lambda s, c=compiled, a=args: c(s, *a)
        state, m = call(state)
        jax.block_until_ready((state, m))
        ts = time.perf_counter()
        for _ in range(k):
            state, m = call(state)
        jax.block_until_ready((state, m))
        dt = (time.perf_counter() - ts) / k
        flops = _flops(compiled)
        out[name] = {"ms_per_step": 1000 * dt, "images_per_s": batch / dt, "flops_per_step": flops,
                     "gflops_per_s": flops / dt / 1e9 if flops else None}
    out["rss_peak_mib"] = max_rss_mib()
    return out


def pipeline(spec: dict) -> dict:
    """Grain images/s for Fashion-MNIST vs the squeeze step's images/s at the same config."""
    import os
    import sys

    from sre2l_jax import optim, squeeze
    from sre2l_jax.data import pipeline as pl
    from sre2l_jax.data import splits
    from sre2l_jax.models import create_model, init_variables
    from sre2l_jax.train_state import TrainState

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "configs"))
    import fashion_mnist

    c = fashion_mnist.get_config("squeeze")
    dc, sc = c.data, c.squeeze
    src = splits.build_source(dc, dc.train_split)
    nb = spec["batches"]
    it = pl.train_iterator(dc, src, sc.batch_size, c.seed)
    batch = next(it)  # thread start-up and the first epoch's permutation are not counted
    ts = time.perf_counter()
    for _ in range(nb):
        batch = next(it)
    pipe_s = time.perf_counter() - ts
    pipe_ips = nb * sc.batch_size / pipe_s

    model = create_model(c.model.arch, dc.num_classes, c.model.width, c.model.stem,
                         jnp.dtype(c.model.dtype))
    spe = pl.steps_per_epoch(len(src), sc.batch_size)
    tx = optim.make_optimizer(sc.optimizer, optim.cosine_with_warmup(sc.lr, sc.epochs, spe,
                              sc.warmup_epochs, per_epoch=False), momentum=sc.momentum,
                              weight_decay=sc.weight_decay)
    v = init_variables(model, jax.random.key(0), (dc.image_size, dc.image_size, dc.channels))
    state = TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"],
                               tx.init(v["params"]))
    step = jax.jit(functools.partial(squeeze.train_step, model=model, tx=tx,
                                     label_smoothing=sc.label_smoothing), donate_argnums=(0,))
    dev_batch = jax.device_put(batch)
    state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    ns = spec["steps"]
    ts = time.perf_counter()
    for _ in range(ns):
        state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - ts) / ns
    ts = time.perf_counter()
    for _ in range(ns):  # as squeeze.py runs it: the iterator feeds every step
        state, m = step(state, next(it))
    jax.block_until_ready(m)
    fed_s = (time.perf_counter() - ts) / ns
    return {"batch_size": sc.batch_size, "image_size": dc.image_size, "width": c.model.width,
            "augment": dc.train_augment, "pipeline_images_per_s": pipe_ips,
            "step_images_per_s": sc.batch_size / step_s, "fed_step_images_per_s": sc.batch_size / fed_s,
            "rss_peak_mib": max_rss_mib()}


WORKERS = {"jax_recover": recover, "jax_student": student_steps, "jax_pipeline": pipeline}
