"""Stage 2, recover: batch planning (`plan`), the objective with the BN loss (`objective`),
real-image starting points (`real_init`) and the stage loop over devices and hosts (`stage`)."""

from sre2l_jax.recover.stage import run, settings

__all__ = ["run", "settings"]
