r"""Fashion-MNIST (the embedded default): 10 classes, 28×28 grayscale, from Debian's IDX files.

Whole pipeline, CPU (about 20 minutes on 2 cores):
  python -m sre2l_jax.main --config=configs/fashion_mnist.py:all --workdir=workdirs/fmnist
One stage, or a smoke run of it:
  python -m sre2l_jax.main --config=configs/fashion_mnist.py:squeeze,runlocal --workdir=/tmp/fm
Options after the stage: runlocal, ipc=N, width=N, iterations=N.
"""

from sre2l_jax import configlib


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, ipc=10, width=16, iterations=1000)
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal

    c.data.name = "fashion_mnist"
    c.data.source = "idx"
    c.data.dir = "/usr/share/datasets/fashion-mnist"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.num_classes = 10
    c.data.image_size = 28
    c.data.channels = 1
    c.data.mean, c.data.std = (0.2860,), (0.3530,)
    c.data.train_augment = "crop_flip"
    c.data.crop_padding = 2

    c.model.arch, c.model.stem, c.model.width = "resnet18", "lowres", arg.width

    c.squeeze.epochs = 4
    c.squeeze.batch_size = 256
    c.squeeze.optimizer = "sgd"
    c.squeeze.lr = 0.1
    c.squeeze.weight_decay = 5e-4
    c.squeeze.warmup_epochs = 0
    c.squeeze.checkpoint_every_steps = 100

    c.recover.ipc = arg.ipc
    c.recover.iterations = arg.iterations
    c.recover.lr = 0.1
    c.recover.alpha_bn = 1.0
    c.recover.jitter = (-2, 2)
    c.recover.checkpoint_every = 100

    c.relabel.epochs = c.validate.epochs = 300
    c.relabel.batch_size = c.validate.batch_size = 100
    c.validate.student_arch, c.validate.student_width = "resnet18", arg.width
    c.validate.eval_every_epochs = 50
    c.validate.seeds = (0, 1, 2)

    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
