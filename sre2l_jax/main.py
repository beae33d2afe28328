"""Command line: `python -m sre2l_jax.main --config=configs/<data>.py:<stage>[,k=v] --workdir=DIR`.

Stages: squeeze, recover, relabel, validate, all (`stages.py`). `--config.recover.ipc=10` style
overrides work for every option; a misspelt option is an error. The experiment drivers
(`sre2l_jax/experiments/`) take the same two flags through `setup` and `launch`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from sre2l_jax import configlib, parallel, stages

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fashion_mnist.py:all")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, images and results.")
DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of a user error (config, data, "
                          "checkpoint) instead of one line.")
# What a user can fix (config, data, checkpoints, settings): one line, exit status 2. Anything else
# is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


def setup(argv) -> tuple:
    """(config, absolute workdir) from the parsed flags; joins a multi-host job if asked to."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "://" in WORKDIR.value:
        # Images, manifests and JSON are plain files; a URL would become a local directory "gs:".
        raise app.UsageError(f"--workdir={WORKDIR.value}: use a mounted path (gcsfuse; "
                             "launch/tpu_pod.sh mounts GCS_BUCKET at /gcs/<bucket>), not a URL")
    parallel.use_cpu_devices(CONFIG.value.cpu_devices)
    parallel.maybe_initialize_distributed()
    _persistent_compilation_cache()
    workdir = os.path.abspath(WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    return CONFIG.value, workdir


def _fail(error: BaseException) -> None:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "Traceback (most recent call last)" in text:  # ml_collections wraps the config file's error
        text = [line for line in text.splitlines() if line.strip()][-1]
    if "Did you mean" in text:  # ml_collections' unknown-key error, quoted twice over
        key = re.search(r"\\?'(\w+)\\?'", text)
        hint = text[text.index("Did you mean"):].replace("\\", "").rstrip("'\"")
        text = f"unknown config key {key.group(1) if key else ''} in a --config.* override. {hint}"
    print(f"error: {' '.join(text.split())}", file=sys.stderr, flush=True)
    os._exit(2)  # not sys.exit: background threads (Orbax, Grain) must not print on the way out


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config (file, option, override key) as one line."""
    try:
        configlib.check_overrides(argv[1:])
        return flags.FLAGS(argv)
    except (flags.Error, *USER_ERRORS, KeyError, AttributeError) as e:
        if "--debug" in argv:
            raise
        _fail(e)


def user_errors_as_one_line(main: Callable) -> Callable:
    """main, with a user error (USER_ERRORS) printed as `error: ...` and exit status 2."""
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if DEBUG.value:
                raise
            _fail(e)
    return wrapped


def _persistent_compilation_cache() -> None:
    """XLA executables cached on disk across runs (JAX's own cache; a run recompiles nothing it
    compiled before). `JAX_COMPILATION_CACHE_DIR` or `SRE2L_COMPILE_CACHE` choose the directory,
    `SRE2L_COMPILE_CACHE=off` turns it off."""
    import jax

    where = os.environ.get("SRE2L_COMPILE_CACHE", os.path.expanduser("~/.cache/sre2l_jax/xla"))
    if where != "off" and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", where)


def launch(main: Callable) -> None:
    """`app.run(main)` with the flag checks and error reporting every entry point shares."""
    flags.mark_flags_as_required(["config", "workdir"])
    # Orbax and Grain log every save at INFO; our own progress lines go to stdout regardless.
    logging.set_verbosity(logging.WARNING)
    app.run(user_errors_as_one_line(main), flags_parser=_parse_flags)


def main(argv) -> None:
    config, workdir = setup(argv)
    logging.info("stage %s, workdir %s", config.stage, workdir)
    stages.run(config, workdir)


if __name__ == "__main__":
    launch(main)
