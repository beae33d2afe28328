"""Test driver: one process of a multi-process recovery; dumps its float images to an .npz."""

import sys

import numpy as np

from sre2l_jax import parallel, recover

sys.path.insert(0, sys.argv[3])
import tiny_config


def main():
    config_arg, workdir = sys.argv[1], sys.argv[2]
    parallel.maybe_initialize_distributed()
    import jax
    images: dict = {}
    recover.recover(tiny_config.get_config(config_arg), workdir, keep_float=images)
    np.savez(f"{workdir}/float_{jax.process_index()}.npz",
             **{f"{c}_{k}": v for (c, k), v in images.items()})


if __name__ == "__main__":
    main()
