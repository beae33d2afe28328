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

    @property
    def variables(self) -> dict:
        """`{params, batch_stats}`: what a model checkpoint and evaluation need."""
        return {"params": self.params, "batch_stats": self.batch_stats}
