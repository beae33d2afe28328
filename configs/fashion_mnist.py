r"""Fashion-MNIST (the embedded default): 10 classes, 28×28 grayscale, from Debian's IDX files.

Whole pipeline, CPU (18:44 with setup on a 2-core Intel Xeon model 207; before relabel was skipped
with online labels 22:27-22:48 on an AMD Zen 4 or Intel Xeon model 167, 36:51 on a Zen 3, 59 minutes
on the slowest 2-core VM measured, Zen 1; README "The default run"):
  python -m sre2l_jax.main --config=configs/fashion_mnist.py:all --workdir=workdirs/fmnist
One stage, or a smoke run of it:
  python -m sre2l_jax.main --config=configs/fashion_mnist.py:squeeze,runlocal --workdir=/tmp/fm
Options after the stage: runlocal, ipc=N, width=N, iterations=N, seeds=N (student seeds),
method=sre2l|rded|edc (a later method instead of SRe²L; README "Later methods"),
recipe=sre2l_paper|edc|rded (a named student recipe; README "Student recipes"), holdout=N.
"""

from sre2l_jax import configlib, recipes


def get_config(arg: str | None = None):
    arg = configlib.parse_arg(arg, ipc=10, width=8, iterations=1000, seeds=1, method="sre2l", recipe="",
                              holdout=0)
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
    c.data.holdout = arg.holdout  # e.g. 5000: the split the recipes in the README were chosen on
    recipes.small_image_recipe(c, width=arg.width, ipc=arg.ipc, iterations=arg.iterations)
    c.validate.seeds = tuple(range(arg.seeds))  # seeds=3 for the mean ± std table

    recipes.apply_method(c, arg.method)
    recipes.apply_student_recipe(c, arg.recipe)
    if arg.runlocal:
        configlib.shrink_for_runlocal(c)
    return configlib.lock(c)
