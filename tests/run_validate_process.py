"""Test driver: one process of a multi-process validate; writes its summary to summary_<pid>.json."""

import importlib.util
import json
import sys

from sre2l_jax import parallel, validate

sys.path.insert(0, sys.argv[3])


def main():
    config_file, workdir = sys.argv[1], sys.argv[2]
    parallel.maybe_initialize_distributed()
    import jax
    spec = importlib.util.spec_from_file_location("validate_process_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = validate.run(module.get_config(sys.argv[4]), workdir)
    with open(f"{workdir}/summary_{jax.process_index()}.json", "w") as f:
        json.dump({"summary": summary, "devices": jax.device_count(),
                   "local_devices": jax.local_device_count()}, f, default=str)


if __name__ == "__main__":
    main()
