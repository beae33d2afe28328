"""Is a stage's output finished, and was it made with these settings? One answer for every stage.

- `settings(config, *sections)`: what an output depends on — the seed and the named config
  sections without `configlib.EXECUTION_KEYS`, plus whatever else a stage passes (hyper-parameter
  objects, content hashes of its inputs). Each stage declares its sections once (`stages.py`).
- `Claim`: `settings.json` in a directory of partial results (checkpoints, finished batches,
  label epochs, a student run). A directory claimed with other settings is never reused.
- `StageDir`: the `done.json` marker of the `all` stage and moving a stale stage directory aside.
- `Progress`: the finished units of a partly done stage (recovery's batches).
- Atomic writers: every file a reader might see half-written goes through `atomic_path`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from sre2l_jax import parallel
from sre2l_jax.configlib import EXECUTION_KEYS, base_config

DONE = "done.json"
CLAIM = "settings.json"


class StaleOutputError(ValueError):
    """A directory holds results made with other settings."""


# ---------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp name beside `path`; on success it is renamed to `path` (readers never see
    half a file), on failure removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def write_npz_atomic(path: str, arrays: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def read_json(path: str) -> Any | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, tuple):
        return list(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON serializable: {type(x)}")


# ---------------------------------------------------------------- settings

def canonical(obj: Any) -> Any:
    """JSON-normal form (tuples → lists, dataclasses → dicts), so equal settings compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def settings(config, *sections: str, **extra: Any) -> dict:
    """The seed, the given config sections without execution-only keys, and `extra`."""
    out = {"seed": config.seed}
    for section in sections:
        out[section] = {k: v for k, v in config[section].to_dict().items()
                        if f"{section}.{k}" not in EXECUTION_KEYS}
    return canonical({**out, **extra})


@functools.cache
def _defaults() -> dict:
    """`section.key -> default` of every option, JSON-normal."""
    return {f"{section}.{k}": v for section, keys in canonical(base_config().to_dict()).items()
            if isinstance(keys, dict) for k, v in keys.items()}


def settings_match(old: Any, new: Any, path: tuple = ()) -> bool:
    """`old == new`, except that an option added to the project after `old` was recorded matches
    when it has its default value: upgrading sre2l_jax does not redo finished work."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old == new
    for k in set(old) | set(new):
        if k in old and k in new:
            if not settings_match(old[k], new[k], (*path, k)):
                return False
        elif k in old or _defaults().get(".".join((*path, k)[-2:]), _MISSING) != new[k]:
            return False
    return True


_MISSING = object()


def content_hash(*arrays: Any) -> str:
    """A short hash of arrays' contents (a synthetic set, a teacher's variables)."""
    h = hashlib.sha256()
    for a in jax.tree.leaves(arrays):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def describe_diff(old: dict, new: dict, prefix: str = "") -> str:
    """`key: old -> new` for every leaf that differs (nested dicts flattened with dots)."""
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = describe_diff(a, b, f"{prefix}{k}.")
            parts += [inner] if inner else []
        elif a != b:
            parts.append(f"{prefix}{k}: {a} -> {b}")
    return ", ".join(parts)


# ---------------------------------------------------------------- partial and finished outputs

@dataclasses.dataclass
class Claim:
    """`<directory>/settings.json`: the settings the directory's contents were made with."""

    directory: str
    settings: dict
    what: str = "results"

    @property
    def path(self) -> str:
        return os.path.join(self.directory, CLAIM)

    def check(self) -> bool:
        """True when the directory is claimed with these settings, False when unclaimed; raises
        StaleOutputError when it holds results of other settings."""
        old = read_json(self.path)
        if old is None:
            return False
        if not settings_match(old, canonical(self.settings)):
            raise StaleOutputError(
                f"{self.directory} holds {self.what} made with other settings "
                f"({describe_diff(old, canonical(self.settings))}); delete it or use a new workdir")
        return True

    def take(self) -> None:
        """check(), then record the settings (process 0) before any result is written."""
        if not self.check() and jax.process_index() == 0:
            write_json_atomic(self.path, canonical(self.settings))


class Progress:
    """A JSON dict of finished units (`key -> record`) that process 0 keeps on disk."""

    def __init__(self, path: str):
        self.path = path
        self.done: dict[str, Any] = read_json(path) or {}

    def finish(self, key: str, record: Any) -> None:
        self.done[key] = record
        if jax.process_index() == 0:
            write_json_atomic(self.path, self.done)


class StageDir:
    """`<workdir>/<stage>`: the `all` stage's done marker and superseding of stale output."""

    def __init__(self, workdir: str, stage: str):
        self.stage = stage
        self.path = os.path.join(workdir, stage)

    def finished_summary(self, stage_settings: dict) -> dict | None:
        """The stage's summary when it finished with these settings, else None."""
        done = read_json(os.path.join(self.path, DONE))
        if done is None or not settings_match(done.get("settings"), canonical(stage_settings)):
            return None
        return done["summary"]

    def has_done_marker(self) -> bool:
        return os.path.exists(os.path.join(self.path, DONE))

    def mark_done(self, stage_settings: dict, summary: dict) -> None:
        if jax.process_index() == 0:
            write_json_atomic(os.path.join(self.path, DONE),
                              {"settings": canonical(stage_settings), "summary": summary})

    def supersede(self) -> str | None:
        """Move existing output out of the way of a run with new settings; returns where to."""
        target = None
        if os.path.isdir(self.path) and os.listdir(self.path):
            n = 1
            while os.path.exists(f"{self.path}.superseded{n}"):
                n += 1
            target = f"{self.path}.superseded{n}"
            if jax.process_index() == 0:
                os.rename(self.path, target)
        parallel.host_barrier(f"supersede_{self.stage}")
        return target
