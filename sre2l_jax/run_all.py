"""The `all` stage: squeeze → recover → relabel → validate, then the report and the results table.

A stage whose output was finished for the same resolved settings is skipped; a half-finished one
resumes from its own checkpoints. Settings are compared per stage: a stage depends on the config
sections of the stages before it and its own (changing `validate.epochs` does not redo recovery).
"""

from __future__ import annotations

import importlib
import json
import os

import jax

from sre2l_jax import checkpoint

PIPELINE = ("squeeze", "recover", "relabel", "validate")
_SECTIONS = {"squeeze": ("data", "model", "squeeze"), "recover": ("recover",),
             "relabel": ("relabel",), "validate": ("validate",)}
# stage -> (module, function(config, workdir) -> summary); main.py dispatches through it too.
STAGE_ENTRY = {"squeeze": ("sre2l_jax.squeeze", "train_and_evaluate"),
               "recover": ("sre2l_jax.recover", "recover"),
               "relabel": ("sre2l_jax.relabel", "relabel"),
               "validate": ("sre2l_jax.validate", "validate")}
DONE = "done.json"


def stage_fingerprint(config, stage: str) -> dict:
    """The resolved settings `stage`'s output depends on."""
    upto = PIPELINE[: PIPELINE.index(stage) + 1]
    settings = {"seed": config.seed}
    for s in upto:
        for section in _SECTIONS[s]:
            settings[section] = config[section].to_dict()
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def is_done(config, workdir: str, stage: str) -> bool:
    path = os.path.join(workdir, stage, DONE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("settings") == stage_fingerprint(config, stage)


def mark_done(config, workdir: str, stage: str, summary: dict) -> None:
    if jax.process_index() == 0:
        checkpoint.write_json_atomic(os.path.join(workdir, stage, DONE),
                                     {"settings": stage_fingerprint(config, stage), "summary": summary})


def run_stage_once(config, workdir: str, stage: str) -> dict:
    """Run `stage` unless it finished earlier for the same settings; return its summary."""
    path = os.path.join(workdir, stage, DONE)
    if is_done(config, workdir, stage):
        print(f"[all] {stage}: finished earlier with the same settings, skipped", flush=True)
        with open(path) as f:
            return json.load(f)["summary"]
    if os.path.exists(path) and jax.process_index() == 0:
        # Finished with other settings: keep it for reference, but out of the way of the new run.
        stage_dir = os.path.dirname(path)
        n = 1
        while os.path.exists(f"{stage_dir}.superseded{n}"):
            n += 1
        os.rename(stage_dir, f"{stage_dir}.superseded{n}")
        print(f"[all] {stage}: settings changed; previous output moved to {stage_dir}.superseded{n}",
              flush=True)
    print(f"[all] {stage}: running", flush=True)
    module, fn = STAGE_ENTRY[stage]
    summary = getattr(importlib.import_module(module), fn)(config, workdir)
    mark_done(config, workdir, stage, summary)
    return summary


def run_all(config, workdir: str) -> dict:
    summaries = {stage: run_stage_once(config, workdir, stage) for stage in PIPELINE}
    if jax.process_index() == 0:
        from sre2l_jax import report

        report.write_report(config, workdir)
        print(report.results_table(workdir), flush=True)
    return summaries
