"""The pipeline: every stage is `run(config, workdir) -> summary`, registered here; plus `all`.

`all` runs squeeze → recover → relabel → validate, then the report and the results table; relabel
only when validate reads stored labels (`validate.labels=stored`). A stage whose output finished
for the same settings is skipped; a half-finished one resumes from its own checkpoints; one
finished (or half-finished) with other settings is moved aside (`<stage>.superseded<n>`) and run
afresh — except validate, whose student runs claim their own settings: adding seeds or baselines
trains only the new students. A stage's settings are those it declares (`<stage>.settings`) plus
those of every stage before it, so changing `student.lr` redoes validate only, and changing
`recover.lr` redoes recover and what follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from sre2l_jax import recover, relabel, squeeze, stage_state, validate


@dataclasses.dataclass(frozen=True)
class Stage:
    run: Callable[..., dict]  # (config, workdir) -> summary
    settings: Callable[..., dict]  # config -> what the stage's output depends on
    # Its runs claim their own settings (validate: one directory per student): with new settings
    # it reruns in place, keeping the runs that still match (more seeds or baselines), and is
    # moved aside only when a run's claim refuses (StaleOutputError).
    reuses_runs: bool = False
    # config -> why nothing would read the stage's output ("" when something does): then `all`
    # skips it (relabel: validate takes its soft labels online, inside each step).
    unread: Callable[..., str] = lambda config: ""


PIPELINE = {
    "squeeze": Stage(squeeze.run, squeeze.settings),
    "recover": Stage(recover.run, recover.settings),
    "relabel": Stage(relabel.run, relabel.settings, unread=relabel.unread),
    "validate": Stage(validate.run, validate.settings, reuses_runs=True),
}


def cumulative_settings(config, name: str) -> dict:
    """The settings of `name` and of every stage before it (their outputs are its inputs)."""
    names = list(PIPELINE)
    return {s: PIPELINE[s].settings(config) for s in names[: names.index(name) + 1]}


def run_once(config, workdir: str, name: str) -> dict:
    """Run stage `name` unless it finished earlier with the same settings or nothing would read its
    output; return its summary."""
    unread = PIPELINE[name].unread(config)
    if unread:
        print(f"[all] {name}: skipped, {unread}", flush=True)
        return {"skipped": unread}
    stage_dir = stage_state.StageDir(workdir, name)
    wanted = cumulative_settings(config, name)
    summary = stage_dir.finished_summary(wanted)
    if summary is not None:
        print(f"[all] {name}: finished earlier with the same settings, skipped", flush=True)
        return summary
    if stage_dir.has_done_marker() and not PIPELINE[name].reuses_runs:
        _supersede(stage_dir)
    print(f"[all] {name}: running", flush=True)
    try:
        summary = PIPELINE[name].run(config, workdir)
    except stage_state.StaleOutputError as e:  # partial output of other settings
        print(f"[all] {name}: {e}", flush=True)
        _supersede(stage_dir)
        summary = PIPELINE[name].run(config, workdir)
    stage_dir.mark_done(wanted, summary)
    return summary


def _supersede(stage_dir: stage_state.StageDir) -> None:
    moved = stage_dir.supersede()
    print(f"[all] {stage_dir.stage}: settings changed; previous output moved to {moved}", flush=True)


def run_all(config, workdir: str) -> dict:
    summaries = {name: run_once(config, workdir, name) for name in PIPELINE}
    if jax.process_index() == 0:
        from sre2l_jax import report

        report.write_report(config, workdir)
        print(report.results_table(workdir), flush=True)
    return summaries


def run(config, workdir: str) -> dict:
    """The stage `config.stage` names: one of PIPELINE, or `all`."""
    if config.stage == "all":
        return run_all(config, workdir)
    return PIPELINE[config.stage].run(config, workdir)
