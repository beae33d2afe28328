r"""Tiny-ImageNet (200 classes, 64²) with the authors' modified ResNet-18 (SPEC §1-3).

Data: the official tiny-imagenet-200 folder (train/<wnid>/images/*.JPEG, val/images + val_annotations.txt).
  python -m sre2l_jax.main --config=configs/tiny_imagenet.py:all,data_dir=tiny-imagenet-200 --workdir=W
Import the authors' squeezed model instead of training: weights=PATH.pth (a `{'state_dict': ...}`
checkpoint with `module.` prefixes is fine). Options: ipc=N, arch=resnet18|resnet50, weights=, data_dir=.
"""

from sre2l_jax import configlib, recipes


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, arch="resnet18", ipc=50, weights="", data_dir="tiny-imagenet-200")
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal
    d = c.data
    d.name, d.source, d.dir, d.num_classes = "tiny_imagenet", "imagefolder", arg.data_dir, 200
    d.train_split, d.eval_split, d.image_size, d.channels = "train", "val", 64, 3
    d.mean, d.std = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
    recipes.tiny_imagenet_recipe(c, arch=arg.arch, ipc=arg.ipc)
    c.squeeze.torchvision_weights = arg.weights
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
