"""Test driver: one process of a multi-process recovery; records which images it wrote itself."""

import json
import os
import sys

import tiny_config

from sre2l_jax import parallel, recover
from sre2l_jax.formats import images as image_files


def main():
    config_arg, workdir = sys.argv[1], sys.argv[2]
    parallel.maybe_initialize_distributed()
    import jax
    written = []
    save_float = image_files.save_float

    def record(path, image):  # <folder>/<ipc>.png, folders a..d are classes 0..3
        folder, name = path.split(os.sep)[-2:]
        written.append(("abcd".index(folder), int(name.split(".")[0])))
        save_float(path, image)

    image_files.save_float = record
    recover.run(tiny_config.get_config(config_arg), workdir)
    with open(f"{workdir}/written_{jax.process_index()}.json", "w") as f:
        json.dump(written, f)


if __name__ == "__main__":
    main()
