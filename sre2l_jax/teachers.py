"""The frozen model(s) every stage after squeeze uses, loaded one way.

`recover.teacher` (default: the squeezed model of this workdir) plus `recover.extra_teachers` form one
`Teachers`: recovery cycles through its members (G-VBSM style; one member is plain SRe²L), and soft
labels, teacher accuracy and report features come from `Teachers.ensemble` — the mean logits of the
members, which for one member are that member's logits.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sre2l_jax import checkpoint, stage_state
from sre2l_jax.models import model_from_meta


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Several frozen models as one: `apply` takes one variables dict per member, returns the
    mean of their float32 logits (a single member's logits unchanged)."""

    members: tuple

    def apply(self, variables: tuple, x: jax.Array, train: bool = False, return_features: bool = False):
        """Mean logits; with `return_features`, also the members' penultimate features, concatenated."""
        if train:
            raise ValueError("an Ensemble teacher is frozen; it has no training mode")
        outs = [m.apply(v, x, train=False, return_features=True) for m, v in zip(self.members, variables)]
        logits = [o[0].astype(jnp.float32) for o in outs]
        mean = logits[0] if len(logits) == 1 else sum(logits) / len(logits)
        if not return_features:
            return mean
        return mean, jnp.concatenate([o[1].astype(jnp.float32) for o in outs], axis=-1)


@dataclasses.dataclass(frozen=True)
class Teachers:
    """One or several frozen models, in recovery's cycle order (the first is *the* teacher)."""

    models: tuple
    variables: tuple
    metas: tuple
    paths: tuple

    @property
    def meta(self) -> dict:
        return self.metas[0]

    @property
    def ensemble(self) -> Ensemble:
        return Ensemble(self.models)

    @functools.cached_property
    def _content_hash(self) -> str:
        # Hashed once per instance: validate asks twice (its runs' claims, the stored labels' check).
        return stage_state.content_hash(self.variables)

    def fingerprint(self) -> str:
        """Content hash of every member's variables (a retrained teacher is a new teacher)."""
        return self._content_hash

    def with_dtype(self, dtype) -> Teachers:
        return dataclasses.replace(self, models=tuple(m.clone(dtype=dtype) for m in self.models))


def squeezed_path(workdir: str) -> str:
    """The model the squeeze stage writes into `workdir`."""
    return os.path.join(workdir, "squeeze", "model")


def default_path(config, workdir: str) -> str:
    """`recover.teacher`, or the model the squeeze stage wrote into this workdir."""
    return config.recover.teacher or squeezed_path(workdir)


def all_paths(config, workdir: str) -> list[str]:
    """The teacher, the backbones squeezed beside it in this workdir (`squeeze.backbones`, when
    the teacher is this workdir's), then `recover.extra_teachers`: recovery's cycle order."""
    backbones = [] if config.recover.teacher else [
        os.path.join(workdir, "squeeze", "backbones", str(i), "model")
        for i in range(len(config.squeeze.backbones))]
    return [default_path(config, workdir), *backbones, *config.recover.extra_teachers]


def check_compatible(meta: dict, *, num_classes: int, channels: int, what: str) -> None:
    """Raise when a checkpoint cannot serve data with `num_classes` classes and `channels` channels."""
    if meta["num_classes"] != num_classes:
        raise ValueError(
            f"{what} has {meta['num_classes']} classes but the data has {num_classes}; "
            "use the checkpoint trained on this data (or set data.class_ids to match)")
    if meta.get("channels", channels) != channels:
        raise ValueError(f"{what} expects {meta['channels']}-channel images, the data has {channels}; "
                         f"set data.channels={meta['channels']} with data.convert_channels=True to "
                         "convert the images (gray → RGB replicates)")


def load_for_data(path: str, data_cfg, what: str) -> tuple[dict, dict]:
    """A model checkpoint and the checks that it can serve this data (classes, channels,
    normalization)."""
    variables, meta = checkpoint.load_model(path)
    check_compatible(meta, num_classes=data_cfg.num_classes, channels=data_cfg.channels,
                     what=f"{what} at {path}")
    for key in ("mean", "std"):
        if not np.allclose(meta[key], data_cfg[key]):
            raise ValueError(f"the {what} at {path} was trained with {key}={meta[key]}, the config "
                             f"says {tuple(data_cfg[key])}")
    return variables, meta


def load_one(path: str, data_cfg, what: str = "model") -> Teachers:
    variables, meta = load_for_data(path, data_cfg, what)
    return Teachers((model_from_meta(meta),), (variables,), (meta,), (os.path.abspath(path),))


def load(config, workdir: str) -> Teachers:
    """Every teacher of `all_paths`, checked against `config.data`."""
    paths = all_paths(config, workdir)
    loaded = [load_for_data(p, config.data, "teacher" if i == 0 else f"extra teacher {i}")
              for i, p in enumerate(paths)]
    return Teachers(tuple(model_from_meta(m) for _, m in loaded), tuple(v for v, _ in loaded),
                    tuple(m for _, m in loaded), tuple(os.path.abspath(p) for p in paths))
