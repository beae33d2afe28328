r"""CIFAR-100 (or CIFAR-10 via configs/cifar10.py) from TFDS, modified ResNet-18 (SPEC §1-3).

Prepare once, on a machine with a network:
  python -c "import tensorflow_datasets as tfds; tfds.builder('cifar100').download_and_prepare()"
  python -m sre2l_jax.main --config=configs/cifar100.py:all --workdir=W
Recovery uses no crop and a jitter in [0, 4] as the authors' CIFAR script; the student follows the
method (teacher in eval mode). Options: ipc=N, weights=PATH.pth, data_dir=TFDS_DIR.
"""

from sre2l_jax import configlib, recipes


def get_config(arg: str | None = None, name: str = "cifar100", num_classes: int = 100):
    arg = configlib.parse_arg(arg, ipc=50, weights="", data_dir="")
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal
    d = c.data
    d.name, d.source, d.tfds_name, d.dir, d.num_classes = name, "tfds", name, arg.data_dir, num_classes
    d.train_split, d.eval_split, d.image_size, d.channels = "train", "test", 32, 3
    d.mean, d.std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    d.train_augment, d.crop_padding = "crop_flip", 4
    recipes.lowres_squeeze(c, lr=0.1, weight_decay=5e-4, batch_size=128, epochs=200, warmup_epochs=0)
    c.squeeze.torchvision_weights = arg.weights
    r = c.recover
    r.ipc, r.lr, r.alpha_bn, r.iterations, r.batch_size = arg.ipc, 0.25, 0.01, 1000, 100
    r.crop, r.jitter = False, (0, 4)
    st = c.student
    st.temperature, st.mix, st.mix_alpha, st.epochs, st.batch_size = 30.0, "mixup", 0.8, 400, 128
    st.optimizer, st.lr, st.weight_decay = "adamw", 1e-3, 0.01
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
