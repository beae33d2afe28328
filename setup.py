"""sre2l_jax: SRe²L (Squeeze, Recover, Relabel) dataset condensation in JAX."""

from setuptools import find_packages, setup

setup(
    name="sre2l_jax",
    version="0.1.0",
    description="SRe²L dataset condensation in JAX: squeeze, recover, relabel, validate",
    packages=find_packages(include=["sre2l_jax", "sre2l_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.7,<5",
        "ml_collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
        "scikit-learn>=1.4,<2",
        "tensorboardX>=2.6,<3",  # event files for every stage (writer)
        "tensorboard>=2.15,<3",  # `tensorboard --logdir W/tensorboard` to view them
    ],
    extras_require={
        # Weight import and the PyTorch reference of the benchmarks only; never imported by the
        # pipeline itself. The pins are the builds Python 3.11 machines here install from disk.
        "torch": ["torch==2.14.1", "torchvision==0.29.1"],
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "ruff>=0.6"],
    },
)
