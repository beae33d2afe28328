"""Orbax checkpoints: finished models (squeezed, imported, students) and resumable training state.

A *model checkpoint* is a directory holding `variables/` ({params, batch_stats}, Orbax PyTree) and
`model.json` (architecture, class count, normalization, class names, accuracy). Every later stage
loads a teacher through `load_model` and checks it against the data it is about to use.
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

MODEL_META = "model.json"


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file + rename so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serializable: {type(x)}")


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
        write_json_atomic(os.path.join(directory, MODEL_META), meta)


def load_model(directory: str) -> tuple[dict, dict]:
    """(variables as NumPy arrays, metadata). Clear error when the directory is not a model."""
    directory = os.path.abspath(directory)
    if not is_model_checkpoint(directory):
        raise FileNotFoundError(
            f"no model checkpoint at {directory} (expected {MODEL_META} and variables/); run the "
            "squeeze stage first or import torchvision weights (see README)")
    with open(os.path.join(directory, MODEL_META)) as f:
        meta = json.load(f)
    with ocp.PyTreeCheckpointer() as ckptr:
        variables = ckptr.restore(os.path.join(directory, "variables"))
    return variables, meta


def check_compatible(meta: dict, *, num_classes: int, channels: int, what: str) -> None:
    """Raise when a checkpoint cannot serve data with `num_classes` classes and `channels` channels."""
    if meta["num_classes"] != num_classes:
        raise ValueError(
            f"{what} has {meta['num_classes']} classes but the data has {num_classes}; "
            "use the checkpoint trained on this data (or set data.class_ids to match)")
    if meta.get("channels", channels) != channels:
        raise ValueError(f"{what} expects {meta['channels']}-channel images, the data has {channels}")


def load_for_data(path: str, data_cfg, what: str) -> tuple[dict, dict]:
    """load_model + the checks that the model can serve this data (classes, channels, normalization)."""
    variables, meta = load_model(path)
    check_compatible(meta, num_classes=data_cfg.num_classes, channels=data_cfg.channels,
                     what=f"{what} at {path}")
    for key in ("mean", "std"):
        if not np.allclose(meta[key], data_cfg[key]):
            raise ValueError(f"the {what} at {path} was trained with {key}={meta[key]}, the config "
                             f"says {tuple(data_cfg[key])}")
    return variables, meta


def load_teachers(data_cfg, primary: str, extra=()) -> list[tuple[dict, dict]]:
    """load_for_data of the teacher and each `recover.extra_teachers` entry, in cycle order."""
    return [load_for_data(path, data_cfg, "teacher" if i == 0 else f"extra teacher {i}")
            for i, path in enumerate([primary, *extra])]


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
