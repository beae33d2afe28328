"""Orbax checkpoints: finished models (squeezed, imported, students) and resumable training state.

A *model checkpoint* is a directory holding `variables/` ({params, batch_stats}, Orbax PyTree) and
`model.json` (architecture, class count, normalization, class names, accuracy). Later stages load
teachers through `teachers.py`, which checks them against the data they are about to serve.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sre2l_jax import stage_state

MODEL_META = "model.json"


def is_model_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MODEL_META))


def save_model(directory: str, variables: dict, meta: dict) -> None:
    """Save `{params, batch_stats}` + metadata; complete only once `model.json` exists."""
    directory = os.path.abspath(directory)
    if jax.process_index() == 0 and os.path.exists(directory):
        shutil.rmtree(directory)
    variables = jax.tree.map(np.asarray, {"params": variables["params"],
                                          "batch_stats": variables["batch_stats"]})
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "variables"), variables)
    if jax.process_index() == 0:
        stage_state.write_json_atomic(os.path.join(directory, MODEL_META), meta)


def load_model(directory: str) -> tuple[dict, dict]:
    """(variables as NumPy arrays, metadata). Clear error when the directory is not a model."""
    directory = os.path.abspath(directory)
    if not is_model_checkpoint(directory):
        raise FileNotFoundError(
            f"no model checkpoint at {directory} (expected {MODEL_META} and variables/); run the "
            "squeeze stage first or import torchvision weights (see README)")
    try:
        with open(os.path.join(directory, MODEL_META)) as f:
            meta = json.load(f)
        with ocp.PyTreeCheckpointer() as ckptr:
            variables = ckptr.restore(os.path.join(directory, "variables"))
    except Exception as e:  # Orbax/tensorstore say OUT_OF_RANGE and the like: name the file
        raise CorruptCheckpointError(
            f"the model checkpoint at {directory} is corrupt or truncated ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); re-create it (rerun squeeze "
            "or the import) or point to another checkpoint") from e
    return variables, meta


class CorruptCheckpointError(ValueError):
    """A model checkpoint directory exists but cannot be read."""


def manager(directory: str, max_to_keep: int = 2, save_interval_steps: int = 1) -> ocp.CheckpointManager:
    """A CheckpointManager for resumable state (items: 'state' pytree and 'extra' JSON)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_interval_steps, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


_saves_in_this_process = 0


def save_state(mngr: ocp.CheckpointManager, step: int, state: Any, extra: dict,
               force: bool = False) -> None:
    global _saves_in_this_process
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            extra=ocp.args.JsonSave(extra)), force=force)
    _saves_in_this_process += 1
    kill_after = int(os.environ.get("SRE2L_FAULT_KILL_AFTER_SAVES", "0"))
    if kill_after and _saves_in_this_process >= kill_after:
        # Fault injection for preemption tests: a real SIGKILL right after a durable save.
        mngr.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)


def latest_extra(mngr: ocp.CheckpointManager) -> tuple[int, dict] | None:
    """(step, extra JSON) of the latest checkpoint without reading its arrays, or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    return step, mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]


def restore_state(mngr: ocp.CheckpointManager, abstract_state: Any,
                  step: int | None = None) -> tuple[int, Any, dict] | None:
    """(step, state, extra) of the latest (or given) checkpoint, or None when there is none."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return step, restored["state"], restored["extra"]
