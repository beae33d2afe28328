r"""The tiny test setup as a config file, for tests that run the CLI in subprocesses.

  python -m sre2l_jax.main --config=tests/tiny_config.py:recover,teacher=PATH --workdir=W
"""

from sre2l_jax import configlib


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, teacher="", ipc_start=0, ipc_end=-1, iterations=6, batch_size=8,
                              num_devices=0, save_float=True)
    c = configlib.base_config()
    c.stage, c.num_devices = arg.stage, arg.num_devices
    c.data.name, c.data.num_classes, c.data.channels = "tiny", 4, 1
    c.data.image_size, c.data.mean, c.data.std = 12, (0.5,), (0.25,)
    c.model.arch, c.model.width, c.model.stem = "_tiny", 4, "lowres"
    r = c.recover
    r.teacher, r.ipc_start, r.ipc_end = arg.teacher, arg.ipc_start, arg.ipc_end
    r.ipc, r.batch_size, r.iterations, r.lr = 4, arg.batch_size, arg.iterations, 0.1
    r.alpha_bn, r.jitter, r.checkpoint_every, r.save_float = 1.0, (-2, 2), 3, arg.save_float
    c.log_every_steps = 3
    return configlib.lock(c)
