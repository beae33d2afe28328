"""Command line: `python -m sre2l_jax.main --config=configs/<data>.py:<stage>[,k=v] --workdir=DIR`.

Stages: squeeze, recover, relabel, validate, all (`stages.py`). `--config.recover.ipc=10` style
overrides work for every option; a misspelt option is an error. The experiment drivers
(`sre2l_jax/experiments/`) take the same two flags through `setup` and `launch`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from sre2l_jax import configlib, parallel, stages

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fashion_mnist.py:all")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, images and results.")


def setup(argv) -> tuple:
    """(config, absolute workdir) from the parsed flags; joins a multi-host job if asked to."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "://" in WORKDIR.value:
        # Images, manifests and JSON are plain files; a URL would become a local directory "gs:".
        raise app.UsageError(f"--workdir={WORKDIR.value}: use a mounted path (gcsfuse; "
                             "launch/tpu_pod.sh mounts GCS_BUCKET at /gcs/<bucket>), not a URL")
    parallel.maybe_initialize_distributed()
    workdir = os.path.abspath(WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    return CONFIG.value, workdir


def launch(main: Callable) -> None:
    """`app.run(main)` with the checks every entry point shares."""
    flags.mark_flags_as_required(["config", "workdir"])
    try:
        configlib.check_overrides(sys.argv[1:])
    except ValueError as e:
        sys.exit(f"error: {e}")
    # Orbax and Grain log every save at INFO; our own progress lines go to stdout regardless.
    logging.set_verbosity(logging.WARNING)
    app.run(main)


def main(argv) -> None:
    config, workdir = setup(argv)
    logging.info("stage %s, workdir %s", config.stage, workdir)
    stages.run(config, workdir)


if __name__ == "__main__":
    launch(main)
