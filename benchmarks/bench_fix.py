"""How far the package's CPU convolutions (sre2l_jax/conv.py) move the recovered images.

SRE2L_CONV=stock is XLA's own gradient, `canonical` the canonical input gradient (same arithmetic,
another summation order), `winograd` (the CPU default) Winograd F(4×4, 3×3) for stride-1 3×3
convolutions (same convolution, float32 rounding ~1e-5 relative). bench.py measures their speed;
this compares their images after a few recovery iterations.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp


def check_identical(res: int = 16, batch: int = 4, modes=("stock", "canonical")) -> float:
    """Max |Δx| after two recovery iterations between two conv modes."""
    from sre2l_jax import conv, models
    from sre2l_jax.recover import objective

    conv.WINOGRAD_MIN_MACS = 0  # the tiny convs here are below the speed threshold: use it anyway

    hp = objective.RecoverHParams(iterations=10, lr=0.1, image_size=res, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, alpha_bn=1.0, jitter=(-2, 2))
    x = jax.random.normal(jax.random.key(1), (batch, res, res, 3))
    labels = jnp.arange(batch) % 10
    outs = []
    for mode in modes:
        os.environ["SRE2L_CONV"] = mode
        model = models.create_model("_tiny", 10, 8, "lowres")
        v = models.init_variables(model, jax.random.key(0), (res, res, 3))
        o = objective.optimizer(hp).init(x)
        run = jax.jit(lambda x, o, v, model=model: objective.run_iterations(
            x, o, labels, jax.random.key(2), 0, 2, models=(model,), variables=(v,), hp=hp))
        outs.append(run(x, o, v)[0])
    os.environ.pop("SRE2L_CONV")
    return float(jnp.max(jnp.abs(outs[0] - outs[1])))


if __name__ == "__main__":
    for pair in (("stock", "canonical"), ("canonical", "winograd")):
        print(f"max |Δx| {pair[0]} vs {pair[1]} conv after 2 iterations: {check_identical(modes=pair):.3g}")
