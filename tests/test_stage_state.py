"""Stage state: which stages rerun when settings change, claims on partial output, moved keys."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, load_config

from sre2l_jax import configlib, stage_state, stages


@pytest.fixture
def fake_pipeline(monkeypatch):
    """The real stage table with each `run` replaced by a recorder (settings stay the real ones)."""
    ran = []

    def fake(name):
        def run(config, workdir):
            os.makedirs(os.path.join(workdir, name), exist_ok=True)
            ran.append(name)
            return {"stage": name}
        return run

    for name, stage in list(stages.PIPELINE.items()):
        monkeypatch.setitem(stages.PIPELINE, name, dataclasses.replace(stage, run=fake(name)))
    return ran


# One key of each stage's own settings, and the stages that must rerun when it changes.
CHANGES = [
    ("squeeze", "lr", 0.05, ["squeeze", "recover", "relabel", "validate"]),
    ("data", "max_eval_examples", 100, ["squeeze", "recover", "relabel", "validate"]),
    ("recover", "lr", 0.1, ["recover", "relabel", "validate"]),
    ("relabel", "top_k", 3, ["relabel", "validate"]),
    ("student", "mix", "none", ["relabel", "validate"]),  # part of the stored labels' batch plan
    ("student", "lr", 0.01, ["validate"]),  # the optimizer: stored labels stay valid
    ("validate", "seeds", (0, 1), ["validate"]),
]


def stored_label_config():
    """`all` with stored labels: every stage's output is read, so every stage runs."""
    c = load_config("fashion_mnist", "all,runlocal")
    c.unlock()
    c.validate.labels = "stored"
    return configlib.lock(c)


@pytest.mark.parametrize("section,key,value,rerun", CHANGES)
def test_a_changed_key_reruns_its_stage_and_the_later_ones(tmp_path, fake_pipeline, section, key,
                                                          value, rerun):
    c = stored_label_config()
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
    assert fake_pipeline == list(stages.PIPELINE)
    fake_pipeline.clear()
    c.unlock()
    c[section][key] = value
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
    assert fake_pipeline == rerun
    for stage in rerun:  # the stale output was moved aside, not mixed with the new
        # ... except where runs claim their own settings (tests/test_all.py checks those runs)
        assert os.path.isdir(tmp_path / f"{stage}.superseded1") != stages.PIPELINE[stage].reuses_runs


def test_all_skips_relabel_when_validate_takes_labels_online(tmp_path, fake_pipeline, capsys):
    c = load_config("fashion_mnist", "all,runlocal")
    assert c.validate.labels == "online"
    summaries = {stage: stages.run_once(c, str(tmp_path), stage) for stage in stages.PIPELINE}
    assert fake_pipeline == ["squeeze", "recover", "validate"]
    assert "validate.labels is 'online'" in summaries["relabel"]["skipped"]
    assert "[all] relabel: skipped, validate.labels is 'online'" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "relabel")


@pytest.mark.parametrize("key,value", [("log_every_steps", 7), ("num_devices", 1), ("stage", "recover"),
                                       ("recover.checkpoint_every", 3), ("recover.ipc_end", 1),
                                       ("squeeze.checkpoint_every_steps", 9),
                                       ("validate.checkpoint_every_epochs", 1)])
def test_execution_keys_rerun_nothing(tmp_path, fake_pipeline, key, value):
    c = stored_label_config()
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
    fake_pipeline.clear()
    c.unlock()
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
    assert fake_pipeline == []


def test_every_execution_key_exists_and_no_stage_settings_hold_one():
    c = load_config("fashion_mnist", "all")
    for key in configlib.EXECUTION_KEYS:
        section, _, name = key.rpartition(".")
        assert name in (c[section] if section else c), key
    for name, stage in stages.PIPELINE.items():
        flat = json.dumps(stage.settings(c))
        for key in configlib.EXECUTION_KEYS - {"stage"}:
            section, _, leaf = key.rpartition(".")
            if section in stage.settings(c):
                assert leaf not in stage.settings(c)[section], (name, key)
        assert '"seed"' in flat


def test_a_claim_refuses_output_of_other_settings(tmp_path):
    claim = stage_state.Claim(str(tmp_path / "d"), {"seed": 0, "recover": {"lr": 0.25}}, "images")
    assert not claim.check()
    claim.take()
    assert claim.check()
    other = stage_state.Claim(str(tmp_path / "d"), {"seed": 0, "recover": {"lr": 0.1}}, "images")
    with pytest.raises(stage_state.StaleOutputError, match=r"holds images made with other settings "
                                                           r"\(recover.lr: 0.25 -> 0.1\)"):
        other.take()
    # Tuples and lists are the same setting once written.
    assert stage_state.Claim(str(tmp_path / "e"), {"a": (1, 2)}).take() is None
    assert stage_state.Claim(str(tmp_path / "e"), {"a": [1, 2]}).check()


def test_all_supersedes_a_stale_partial_stage(tmp_path, monkeypatch):
    """A half-finished stage of other settings (its claim, no done marker) is moved aside."""
    c = load_config("fashion_mnist", "all,runlocal")
    calls = []

    def run(config, workdir):
        calls.append(1)
        settings = stages.PIPELINE["recover"].settings(config)
        stage_state.Claim(os.path.join(workdir, "recover"), settings).take()
        return {}

    monkeypatch.setitem(stages.PIPELINE, "recover", stages.Stage(run, stages.PIPELINE["recover"].settings))
    stage_state.Claim(str(tmp_path / "recover"), {"seed": 0, "recover": {"lr": 99}}).take()
    stages.run_once(c, str(tmp_path), "recover")
    assert len(calls) == 2 and os.path.isdir(tmp_path / "recover.superseded1")


def test_moved_keys_name_their_new_place(tmp_path):
    with pytest.raises(ValueError, match="relabel.temperature moved to student.temperature"):
        configlib.check_overrides(["--config.relabel.temperature=4"])
    c = configlib.base_config()
    c.relabel.temperature = 4.0  # a user config file written for the old layout
    with pytest.raises(ValueError, match="relabel.temperature moved to student.temperature"):
        configlib.lock(c)
    out = subprocess.run([sys.executable, "-m", "sre2l_jax.main",
                          "--config=configs/fashion_mnist.py:validate", "--config.validate.lr=0.1",
                          f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip() == ("error: config key validate.lr moved to student.lr; "
                                  "set --config.student.lr instead")


def _drop_key(path: str, section: str, key: str) -> None:
    """Rewrite a done marker as an older sre2l_jax (without `section.key`) would have written it."""
    done = json.load(open(path))
    for stage_settings in done["settings"].values():
        stage_settings.get(section, {}).pop(key, None)
    json.dump(done, open(path, "w"))


@pytest.mark.parametrize("value,rerun", [(False, []), (True, list(stages.PIPELINE))])
def test_an_option_added_later_reruns_only_when_set(tmp_path, fake_pipeline, value, rerun):
    """Output of a version without `data.convert_channels` is reused while it has its default."""
    c = stored_label_config()
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
        _drop_key(str(tmp_path / stage / "done.json"), "data", "convert_channels")
    fake_pipeline.clear()
    c.unlock()
    c.data.convert_channels = value
    for stage in stages.PIPELINE:
        stages.run_once(c, str(tmp_path), stage)
    assert fake_pipeline == rerun


def test_a_removed_option_does_not_match():
    assert not stage_state.settings_match({"data": {"gone": 1, "size": 2}}, {"data": {"size": 2}})
    assert stage_state.settings_match({"data": {"size": 2}}, {"data": {"size": 2}})
