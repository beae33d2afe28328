"""Command line: `python -m sre2l_jax.main --config=configs/<data>.py:<stage>[,k=v] --workdir=DIR`.

Stages: squeeze, recover, relabel, validate, all. `--config.recover.ipc=10` style overrides work for
every option; a misspelt option is an error.
"""

from __future__ import annotations

import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

from sre2l_jax import parallel, run_all

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fashion_mnist.py:all")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, images and results.")
flags.mark_flags_as_required(["config", "workdir"])

def run_stage(config, workdir: str) -> dict:
    module_name, fn_name = {**run_all.STAGE_ENTRY, "all": ("sre2l_jax.run_all", "run_all")}[config.stage]
    return getattr(importlib.import_module(module_name), fn_name)(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "://" in _WORKDIR.value:
        # Images, manifests and JSON are plain files; a URL would become a local directory "gs:".
        raise app.UsageError(f"--workdir={_WORKDIR.value}: use a mounted path (gcsfuse; "
                             "launch/tpu_pod.sh mounts GCS_BUCKET at /gcs/<bucket>), not a URL")
    parallel.maybe_initialize_distributed()
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    logging.info("stage %s, workdir %s", _CONFIG.value.stage, workdir)
    run_stage(_CONFIG.value, workdir)


if __name__ == "__main__":
    # Orbax and Grain log every save at INFO; our own progress lines go to stdout regardless.
    logging.set_verbosity(logging.WARNING)
    app.run(main)
