r"""Your own data: any ImageFolder tree, everything else read from the tree.

  python -m sre2l_jax.main --config=configs/imagefolder.py:all,data_dir=DIR --workdir=W

DIR is `DIR/train/<class>/*` with `DIR/val/<class>/*` (or `test/`), or a tree without an evaluation
split (`DIR/train/<class>/*` or `DIR/<class>/*`), from which val_fraction (0.1) of each class
evaluates. Class names and count come from the folders, image size and channels from the images
(override: size=, channels=), mean and std from the training images (override: mean=, std=; they
are stored with the model). The recipe follows the resolution: ≤ 32² the CPU-sized low-resolution
recipe of the Fashion-MNIST default (the authors' CIFAR recovery), 33-95² Tiny-ImageNet's, ≥ 96²
ImageNet's (a teacher trained here: ImageNet stem, SGD). Options: ipc=, width=, seeds=, runlocal,
method=sre2l|rded|edc, recipe=sre2l_paper|edc|rded, holdout=, name=.
"""

from sre2l_jax import configlib, recipes
from sre2l_jax.data import folder_info


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, data_dir="", size=0, channels=0, mean=(), std=(), val_fraction=0.1,
                              ipc=10, width=8, seeds=1, method="sre2l", recipe="", holdout=0, name="")
    if not arg.data_dir:
        raise ValueError("configs/imagefolder.py needs data_dir=DIR (an ImageFolder tree), e.g. "
                         "--config=configs/imagefolder.py:all,data_dir=/data/mine")
    info = folder_info.inspect(arg.data_dir)
    c = configlib.base_config()
    c.stage, c.runlocal = arg.stage, arg.runlocal
    d = c.data
    d.name = arg.name or info.root.rstrip("/").split("/")[-1]
    d.source, d.dir, d.num_classes = "imagefolder", info.root, len(info.class_names)
    d.train_split, d.eval_split = info.train_split, info.eval_split or info.train_split
    d.val_fraction = 0.0 if info.eval_split else arg.val_fraction
    d.image_size, d.channels = arg.size or info.image_size, arg.channels or info.channels
    d.holdout = arg.holdout
    if arg.mean and arg.std:
        d.mean, d.std = tuple(arg.mean), tuple(arg.std)
    else:
        d.mean, d.std = folder_info.mean_std(info, d.channels, d.image_size)
    if d.image_size <= 32:
        recipes.small_image_recipe(c, width=arg.width, ipc=arg.ipc)
    elif d.image_size < 96:
        recipes.tiny_imagenet_recipe(c, ipc=arg.ipc)
    else:
        recipes.tiny_imagenet_recipe(c, ipc=arg.ipc)  # a trained teacher, SGD + cosine + warmup
        c.model.stem, d.eval_resize = "imagenet", round(d.image_size * 256 / 224)
        c.recover.lr, c.recover.alpha_bn, c.recover.jitter = 0.25, 0.01, (0, 32)
    c.validate.seeds = tuple(range(arg.seeds))
    recipes.apply_method(c, arg.method)
    recipes.apply_student_recipe(c, arg.recipe)
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
