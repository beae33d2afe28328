"""The student recipe's pieces against hand computations; the held-out split stays held out."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from helpers import REPO, load_config, write_idx
from ml_collections import config_flags

from sre2l_jax import optim, recipes
from sre2l_jax.configlib import base_config
from sre2l_jax.data import sources, splits
from sre2l_jax.formats import labels as label_files
from sre2l_jax.models import create_model, init_variables
from sre2l_jax.student import losses, plans, steps
from sre2l_jax.train_state import TrainState


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mse_ce_loss_matches_a_hand_computation():
    """F.mse_loss(s, t) (mean over all elements) + 0.025 · CE(s, y), as EDC's student loss."""
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 3, (6, 5)), rng.normal(0, 3, (6, 5))
    labels = np.array([0, 1, 2, 3, 4, 0])
    ce = np.mean(-np.log(_softmax(s))[np.arange(6), labels])
    expected = np.mean((s - t) ** 2) + 0.025 * ce
    got = losses.mse_ce_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                             jnp.asarray(labels), 0.025)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_mse_ce_loss_bounds_the_classes_a_top_k_label_did_not_store():
    rng = np.random.default_rng(1)
    s, t = rng.normal(0, 3, (4, 6)), rng.normal(0, 3, (4, 6))
    labels = np.array([0, 1, 2, 3])
    kept = np.argsort(-t, axis=1)[:, :3]
    stored = np.full_like(t, label_files.FILL_LOGIT)
    np.put_along_axis(stored, kept, np.take_along_axis(t, kept, 1), 1)
    known = stored > -1e8
    bound = np.take_along_axis(t, kept, 1).min(1, keepdims=True)  # the smallest stored logit
    error = np.where(known, (s - t) ** 2, np.maximum(s - bound, 0) ** 2)
    ce = np.mean(-np.log(_softmax(s))[np.arange(4), labels])
    expected = error.mean() + 0.025 * ce
    got = losses.mse_ce_loss(jnp.asarray(s, jnp.float32), jnp.asarray(stored, jnp.float32),
                             jnp.asarray(labels), 0.025, top_k_targets=True)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def _cos(a):
    return 0.5 * (1 + np.cos(np.pi * a))


@pytest.mark.parametrize("kind,checks", [
    ("cosine_epoch", {0: 1.0, 9: 1.0, 10: _cos(1 / 20), 195: _cos(19 / 20)}),
    ("cosine_step", {0: 1.0, 100: 0.5, 50: _cos(1 / 4)}),
    ("smooth_cosine", {0: 1.0, 55: _cos(5 / 40), 199: _cos(19 / 40)}),
    ("multistep", {0: 1.0, 159: 1.0, 160: 0.5, 179: 0.5, 180: 0.25, 189: 0.25, 190: 0.125, 199: 0.125}),
])
def test_schedule_values_at_chosen_steps(kind, checks):
    """20 epochs of 10 steps, lr 1: the values each schedule's formula gives."""
    lr = optim.make_schedule(kind, 1.0, 20, 10, zeta=2.0, milestones=(0.8, 0.9, 0.95), gamma=0.5)
    for step, want in checks.items():
        assert float(lr(step)) == pytest.approx(want, rel=1e-5), (kind, step)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.make_schedule("linear", 1.0, 10, 10)


def test_ema_of_the_student_follows_the_recurrence():
    """Three steps with EMA rate 0.9: the EMA equals e ← 0.9·e + 0.1·w computed by hand from the
    parameters after each step; evaluation uses it with the live BN statistics."""
    model = create_model("_tiny", 4, width=4, stem="lowres")
    v = init_variables(model, jax.random.key(0), (12, 12, 1))
    tx = optim.make_optimizer("adamw", lambda _: 1e-2, weight_decay=0.01)
    spec = plans.AugSpec(12, (0.5,), (0.25,), mix="cutmix")
    recipe = steps.Recipe(model, model, tx, spec, 4.0, False, ema=0.9)
    state = TrainState(jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]),
                       v["params"])
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 12, 12, 1), dtype=np.uint8))
    labels = jnp.arange(8) % 4
    step = jax.jit(lambda st, ids: steps.online_step(st, v, images, labels, ids, jnp.asarray(True),
                                                     recipe=recipe))
    by_hand = jax.tree.map(np.asarray, state.ema)
    for e in range(3):
        state, _ = step(state, jnp.asarray([0, e, 0], jnp.int32))
        by_hand = jax.tree.map(lambda a, w: 0.9 * a + 0.1 * np.asarray(w), by_hand, state.params)
    for got, want in zip(jax.tree.leaves(state.eval_variables["params"]), jax.tree.leaves(by_hand)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert state.eval_variables["batch_stats"] is state.batch_stats
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state.ema),
                                                              jax.tree.leaves(state.params)))
    assert moved > 1e-4  # the EMA lags the weights: the comparison above could fail


def test_pad_crop_plan_is_a_shifted_window_of_the_padded_image():
    spec = plans.AugSpec(6, (0.5,), (0.25,), crop="pad_crop", crop_padding=2, mix="none")
    x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
    boxes, _ = plans.crop_plan(jax.random.key(1), x, spec)
    assert boxes.shape == (2, 4) and np.all(np.abs(boxes[:, :2]) <= 2) and np.all(boxes[:, 2:] == 6)
    plan = {"boxes": jnp.asarray([[-2, 1, 6, 6], [0, 0, 6, 6]], jnp.int32),
            "flips": jnp.asarray([False, True]), **plans.mix_plan(jax.random.key(0), 2, spec)}
    out = np.asarray(plans.apply_plan(x, plan, spec))
    black = -0.5 / 0.25
    padded = np.pad(np.asarray(x[0, :, :, 0]), 2, constant_values=black)
    np.testing.assert_array_equal(out[0, :, :, 0], padded[0:6, 3:9])
    np.testing.assert_array_equal(out[1], np.asarray(x[1])[:, ::-1])
    no_flip = plans.AugSpec(6, (0.5,), (0.25,), crop="none", flip=False, mix="none")
    assert not np.any(plans.crop_plan(jax.random.key(1), x, no_flip)[1])


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout_idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 20)):
        write_idx(str(root / f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 4, n).astype(np.uint8))
    return str(root)


def _data(idx_dir, **kw):
    d = base_config().data
    d.update({"name": "t", "source": "idx", "dir": idx_dir, "num_classes": 10, "class_ids": (0, 1, 2, 3),
              "image_size": 8, "channels": 1, "mean": (0.5,), "std": (0.25,), "holdout": 20, **kw})
    d.num_classes = 4
    return d


def test_holdout_is_class_balanced_and_disjoint_from_every_training_set(idx_dir):
    d = _data(idx_dir)
    held, train = splits.build_source(d, splits.HOLDOUT), splits.build_source(d, "train")
    full = sources.source_labels(splits.build_source(_data(idx_dir, holdout=0), "train"))
    assert np.bincount(sources.source_labels(held), minlength=4).tolist() == [5, 5, 5, 5]
    held_idx, train_idx = set(held.indices.tolist()), set(train.indices.tolist())
    assert not held_idx & train_idx and len(held_idx | train_idx) == len(full)
    # The same images however often it is built; another holdout_seed draws others.
    assert held.indices.tolist() == splits.build_source(d, splits.HOLDOUT).indices.tolist()
    other = splits.build_source(_data(idx_dir, holdout_seed=1), splits.HOLDOUT)
    assert other.indices.tolist() != held.indices.tolist()
    # Caps apply to what is left for training; the holdout keeps all its images.
    capped = splits.build_source(_data(idx_dir, max_train_examples=40), "train")
    assert len(capped) == 40 and not set(capped.source.indices[capped.indices].tolist()) & held_idx
    with pytest.raises(ValueError, match="multiple of the 4 classes"):
        splits.build_source(_data(idx_dir, holdout=6), "train")
    with pytest.raises(ValueError, match="no held-out split"):
        splits.build_source(_data(idx_dir, holdout=0), splits.HOLDOUT)


@pytest.mark.parametrize("name", sorted(recipes.STUDENT_RECIPES))
def test_a_named_recipe_sets_its_student_keys(name):
    c = load_config("fashion_mnist", f"all,recipe={name}")
    for key, value in recipes.STUDENT_RECIPES[name].items():
        assert c.student[key] == value, key


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown student recipe 'fast'"):
        load_config("fashion_mnist", "all,recipe=fast")


@pytest.mark.parametrize("ipc, epochs", [(1, 8000), (3, 4000), (10, 2000), (20, 1000), (50, 400)])
def test_the_small_image_student_trains_8000_steps_at_every_ipc(ipc, epochs):
    c = load_config("fashion_mnist", f"all,ipc={ipc}")
    steps_per_epoch = -(-ipc * c.data.num_classes // c.student.batch_size)
    assert c.student.epochs == epochs and 8000 <= c.student.epochs * steps_per_epoch < 8000 + steps_per_epoch
    assert c.student.eval_every_epochs == c.validate.checkpoint_every_epochs == epochs // 2


@pytest.mark.parametrize("override, epochs, steps_per_epoch", [
    ("--config.student.batch_size=50", 4000, 2),  # IPC 10 at batch 50: still 8000 steps
    ("--config.recover.ipc=50", 400, 20),
    ("--config.student.epochs=1000", 1000, 4),  # an explicit length wins
])
def test_command_line_overrides_keep_the_length_rule(override, epochs, steps_per_epoch):
    argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'fashion_mnist.py')}:all", override]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    c = flag_values.config
    assert c.student.epochs == epochs
    assert -(-c.recover.ipc * c.data.num_classes // c.student.batch_size) == steps_per_epoch
    assert c.student.eval_every_epochs == c.validate.checkpoint_every_epochs == epochs // 2
