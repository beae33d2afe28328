r"""CIFAR-10 from TFDS: the CIFAR-100 recipe with 10 classes (see configs/cifar100.py).

  python -m sre2l_jax.main --config=configs/cifar10.py:all --workdir=W
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar100


def get_config(arg: str | None = None):
    return cifar100.get_config(arg, name="cifar10", num_classes=10)
