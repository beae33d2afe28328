"""The state of a model in training (squeeze's teacher, validate's students)."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any = None  # params averaged over steps, when the recipe keeps an EMA

    @property
    def variables(self) -> dict:
        """`{params, batch_stats}`: what a model checkpoint and evaluation need."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def eval_variables(self) -> dict:
        """The weights a model is evaluated and saved with: EMA parameters where there are any,
        with the live BN running statistics (as EDC evaluates)."""
        return self.variables if self.ema is None else {"params": self.ema, "batch_stats": self.batch_stats}
