"""The `all` stage end to end on real Fashion-MNIST (runlocal size): report, table, no redone stages."""

import json
import os

import pytest
from helpers import FASHION, load_config

from sre2l_jax import stages
from sre2l_jax.stage_state import DONE

pytestmark = pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist not installed")


def test_all_writes_report_and_second_run_skips_finished_stages(tmp_path, capsys):
    c = load_config("fashion_mnist", "all,runlocal")
    c.unlock()
    c.data.max_train_examples, c.data.max_eval_examples = 256, 200
    c.validate.baselines = ("real_soft",)
    workdir = str(tmp_path)
    first = stages.run_all(c, workdir)
    out = capsys.readouterr().out
    assert set(first) == set(stages.PIPELINE)
    # Online labels (the default): nothing reads stored labels, so relabel does not run.
    assert "skipped" in first["relabel"] and not os.path.exists(os.path.join(workdir, "relabel"))
    assert "distilled-set student" in out and "baseline real_soft" in out
    report = os.path.join(workdir, "report")
    for name in ("grid.png", "tsne.png", "curves.png"):
        assert os.path.getsize(os.path.join(report, name)) > 5000, name
    html = open(os.path.join(report, "index.html")).read()
    assert 'src="tsne.png"' in html and "distilled-set student" in html and 'src="real_grid.png"' in html
    summary = json.load(open(os.path.join(workdir, "validate", "summary.json")))
    _assert_tensorboard(workdir)
    assert 0 <= summary["top1"] <= 100 and summary["ipc"] == c.recover.ipc

    ran = ("squeeze", "recover", "validate")
    stamps = {s: os.path.getmtime(os.path.join(workdir, s, DONE)) for s in ran}
    model_stamp = os.path.getmtime(os.path.join(workdir, "squeeze", "model", "model.json"))
    stages.run_all(c, workdir)
    out = capsys.readouterr().out
    assert out.count("finished earlier with the same settings, skipped") == 3
    assert {s: os.path.getmtime(os.path.join(workdir, s, DONE)) for s in ran} == stamps
    assert os.path.getmtime(os.path.join(workdir, "squeeze", "model", "model.json")) == model_stamp

    # A changed optimizer setting of the student redoes validate only.
    c.student.lr = 2e-3
    stages.run_all(c, workdir)
    out = capsys.readouterr().out
    assert out.count("finished earlier with the same settings, skipped") == 2
    assert "[all] validate: running" in out
    assert os.path.exists(os.path.join(workdir, "validate.superseded1", "summary.json"))

    # One more seed trains only the new seed's students: the finished ones are kept, not moved aside.
    seed0 = os.path.join(workdir, "validate", "runs", "sre2l_seed0", "result.json")
    seed0_stamp = os.path.getmtime(seed0)
    c.validate.seeds = (0, 1)
    stages.run_all(c, workdir)
    assert os.path.getmtime(seed0) == seed0_stamp
    assert not os.path.exists(os.path.join(workdir, "validate.superseded2"))
    summary = json.load(open(os.path.join(workdir, "validate", "summary.json")))
    assert [s["seed"] for s in summary["per_seed"]] == [0, 1]


def _assert_tensorboard(workdir: str) -> None:
    """Every stage that ran wrote TensorBoard events with its scalars (read back with TensorBoard's
    reader; relabel's: tests/test_validate.py)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = {"squeeze": {"squeeze/loss", "squeeze/eval_top1", "squeeze/lr"},
                "recover": {"recover/loss", "recover/bn", "recover/ce"},
                "validate": {"validate/sre2l/seed0/loss", "validate/sre2l/seed0/eval_top1",
                             "validate/real_soft/seed0/loss"}}
    for stage, tags in expected.items():
        acc = EventAccumulator(os.path.join(workdir, "tensorboard", stage))
        acc.Reload()
        assert tags <= set(acc.Tags()["scalars"]), (stage, acc.Tags()["scalars"])
        assert len(acc.Scalars(sorted(tags)[0])) >= 1
    acc = EventAccumulator(os.path.join(workdir, "tensorboard", "recover"))
    acc.Reload()
    assert "recover/images" in acc.Tags()["images"]
