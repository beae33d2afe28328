"""Check that the package's canonical-gradient conv (sre2l_jax/conv.py) changes no result.

The package routes ResNet convolutions through `sre2l_jax.conv.canonical_conv` on CPU; with
SRE2L_CONV=stock it uses XLA's own gradient. bench.py measures both; this compares their images.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp


def check_identical(res: int = 16, batch: int = 4) -> float:
    """Max |Δx| after two recovery iterations, stock vs canonical conv (~1e-7: summation order)."""
    from sre2l_jax import models, recover_core

    hp = recover_core.RecoverHParams(iterations=10, lr=0.1, image_size=res, mean=(0.5,) * 3,
                                     std=(0.25,) * 3, alpha_bn=1.0, jitter=(-2, 2))
    x = jax.random.normal(jax.random.key(1), (batch, res, res, 3))
    labels = jnp.arange(batch) % 10
    outs = []
    for mode in ("stock", "canonical"):
        os.environ["SRE2L_CONV"] = mode
        model = models.create_model("_tiny", 10, 8, "lowres")
        v = models.init_variables(model, jax.random.key(0), (res, res, 3))
        o = recover_core.optimizer(hp).init(x)
        run = jax.jit(lambda x, o, v, model=model: recover_core.run_iterations(
            x, o, labels, jax.random.key(2), 0, 2, model=model, variables=v, hp=hp))
        outs.append(run(x, o, v)[0])
    os.environ.pop("SRE2L_CONV")
    return float(jnp.max(jnp.abs(outs[0] - outs[1])))


if __name__ == "__main__":
    print(f"max |Δx| stock vs canonical conv after 2 iterations: {check_identical():.3g}")
