"""ResNets in torchvision's layout, with BatchNorm that reports its input statistics.

Parameter names mirror torchvision (`conv1`, `bn1`, `layer2_0/downsample_conv`, `fc`) so that
`torch_import` is a renaming, not a search. BatchNorm follows PyTorch exactly (eps 1e-5, momentum
0.1, running variance updated with the unbiased estimate) because SRe²L matches against running
statistics that torchvision computed that way.

Recovery needs, for every BN layer, the mean and biased variance of that layer's *input* over
(batch, H, W). When the `bn_stats` collection is mutable every BatchNorm sows
``{'mean', 'var', 'running_mean', 'running_var'}``; `bn_statistics` returns them in forward order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sre2l_jax import conv, norm, parallel

BN_STATS = "bn_stats"
BN_IMAGE_SUMS = "bn_image_sums"  # per image Σ and Σ² of each BN input over (H, W): class statistics
WINOGRAD = "winograd"  # collection of transformed conv kernels, see with_winograd_kernels
STEM_BN = "bn1"  # torchvision's name for the stem BatchNorm, the one SRe²L weights by 10.

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming


class BatchNorm(nn.Module):
    """PyTorch-semantics BatchNorm over the last axis that can sow its input statistics."""

    use_running_average: bool
    momentum: float = 0.9  # flax convention: running = momentum*running + (1-momentum)*batch
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        training = not self.use_running_average and not self.is_initializing()
        if training and not self.is_mutable_collection(BN_STATS):
            y, mean, var = norm.batch_norm_train(x.astype(jnp.float32), scale, bias, self.epsilon)
            self._update_running(ra_mean, ra_var, mean, var, x.size // features)
            return y.astype(self.dtype)
        needs_batch_stats = not self.use_running_average or self.is_mutable_collection(BN_STATS)
        if needs_batch_stats:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)  # biased, as torch's hook computes it
        if self.is_mutable_collection(BN_IMAGE_SUMS):
            x32 = x.astype(jnp.float32)
            pixels = jnp.full((x.shape[0],), x.shape[1] * x.shape[2], jnp.float32)
            self.sow(BN_IMAGE_SUMS, "stats", {"sum": jnp.sum(x32, axis=(1, 2)), "pixels": pixels,
                                              "sumsq": jnp.sum(jnp.square(x32), axis=(1, 2))},
                     reduce_fn=lambda _, new: new, init_fn=dict)
        if self.is_mutable_collection(BN_STATS):
            self.sow(BN_STATS, "stats", {"mean": mean, "var": var,
                                         "running_mean": ra_mean.value, "running_var": ra_var.value},
                     reduce_fn=lambda _, new: new, init_fn=dict)

        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        elif training:
            self._update_running(ra_mean, ra_var, mean, var, x.size // features)
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = (x.astype(jnp.float32) - mean) * inv + bias
        return y.astype(self.dtype)

    def _update_running(self, ra_mean, ra_var, mean, var, n: int) -> None:
        """PyTorch's running statistics: the variance enters as the unbiased estimate."""
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased


class Conv(nn.Module):
    """Bias-free NHWC conv with padding kernel // 2 (the parameter tree of `nn.Conv`: `kernel`).

    On CPU its gradient runs through `conv.canonical_conv`; with transformed kernels in the
    `winograd` collection (`with_winograd_kernels`) a stride-1 3×3 conv runs Winograd F(4×4, 3×3).
    """

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        mode = conv.conv_mode()
        if mode == "winograd" and conv.winograd_eligible(x.shape, kernel.shape, s, self.dtype) and (
                self.has_variable(WINOGRAD, "kernels")
                or (self.is_mutable_collection(WINOGRAD) and not self.is_initializing())):
            kernels = self.variable(WINOGRAD, "kernels", conv.winograd_kernels, kernel).value
            return conv.winograd_conv2d(x, kernel, kernels)
        impl = jax.lax.conv_general_dilated if mode == "stock" else conv.canonical_conv
        return impl(x, kernel, (s, s), [(k // 2, k // 2)] * 2, dimension_numbers=conv.DN)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> Conv:
    return Conv(features, kernel, stride, dtype, name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(self.norm(name="bn1")(_conv(self.features, 3, self.stride, "conv1", self.dtype)(x)))
        y = self.norm(name="bn2")(_conv(self.features, 3, 1, "conv2", self.dtype)(y))
        if x.shape[-1] != self.features or self.stride != 1:
            x = self.norm(name="downsample_bn")(
                _conv(self.features, 1, self.stride, "downsample_conv", self.dtype)(x))
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: the stride sits on the 3×3 conv."""

    features: int
    stride: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.features * self.expansion
        y = nn.relu(self.norm(name="bn1")(_conv(self.features, 1, 1, "conv1", self.dtype)(x)))
        y = nn.relu(self.norm(name="bn2")(_conv(self.features, 3, self.stride, "conv2", self.dtype)(y)))
        y = self.norm(name="bn3")(_conv(out, 1, 1, "conv3", self.dtype)(y))
        if x.shape[-1] != out or self.stride != 1:
            x = self.norm(name="downsample_bn")(_conv(out, 1, self.stride, "downsample_conv", self.dtype)(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet with torchvision's layout.

    stem: "imagenet" = 7×7 stride-2 conv + 3×3 stride-2 max-pool; "lowres" = the 3×3 stride-1 conv
    without max-pool that SRe²L uses for Tiny-ImageNet and CIFAR.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    width: int = 64
    stem: str = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = _conv(self.width, 7, 2, "conv1", self.dtype)(x)
            x = nn.relu(norm(name=STEM_BN)(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "lowres":
            x = nn.relu(norm(name=STEM_BN)(_conv(self.width, 3, 1, "conv1", self.dtype)(x)))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected 'imagenet' or 'lowres'")
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.width * 2**i, stride, norm, self.dtype,
                                   name=f"layer{i + 1}_{j}")(x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(features)
        return (logits, features) if return_features else logits


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
# Two stages of one block each: the smallest net with a stem BN, a downsample BN and a residual.
_ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=BasicBlock)

ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50, "resnet101": ResNet101,
    "_tiny": _ResNetTiny,
}


def create_model(arch: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                 dtype: Any = jnp.float32) -> ResNet:
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](num_classes=num_classes, width=width, stem=stem, dtype=dtype)


def model_from_meta(meta: dict) -> ResNet:
    """The architecture a model checkpoint's metadata describes."""
    return create_model(meta["arch"], meta["num_classes"], meta["width"], meta["stem"])


def initial_variables(model: ResNet, rng: jax.Array, image_shape: Sequence[int]) -> dict:
    """`{'params', 'batch_stats'}` for inputs of shape (H, W, C), traced (call it inside a jit)."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def init_variables(model: ResNet, rng: jax.Array, image_shape: Sequence[int]) -> dict:
    """`initial_variables`, compiled for its one run (-O2 on CPU: the same values, a third of the
    compile time)."""
    init = functools.partial(initial_variables, model, image_shape=tuple(image_shape))
    return jax.jit(init, compiler_options=parallel.one_shot_compiler_options())(rng)


def _walk_in_order(tree: dict, prefix: str, out: list) -> None:
    # Flax fills collections in call order and dicts keep it; jax.tree flattening would sort keys.
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if key == "stats" and isinstance(value, dict) and not isinstance(next(iter(value.values())), dict):
            out.append((prefix, value))
        elif isinstance(value, dict):
            _walk_in_order(value, path, out)


def bn_statistics(sown: dict) -> list[tuple[str, dict]]:
    """[(module path, the BN's sown dict)] in forward order, from a BN_STATS or BN_IMAGE_SUMS
    collection."""
    out: list = []
    _walk_in_order(sown, "", out)
    return out


def apply_with_bn_stats(model: ResNet, variables: dict, x: jax.Array):
    """Eval-mode forward that also returns the per-BN statistics in forward order."""
    logits, state = model.apply(variables, x, train=False, mutable=[BN_STATS])
    return logits, bn_statistics(state[BN_STATS])


def with_winograd_kernels(model: ResNet, variables, input_shape: Sequence[int]):
    """`variables` plus the Winograd kernels of every conv that uses them on NHWC `input_shape`.

    For a loop over frozen weights; a no-op unless `conv.conv_mode()` is `winograd`. Call it
    inside the jitted function, before the loop: the dummy forward only decides which convs are
    eligible (`conv.winograd_eligible`) and XLA drops it.
    """
    if conv.conv_mode() != "winograd" or WINOGRAD in variables:
        return variables
    model_vars = {k: variables[k] for k in ("params", "batch_stats")}
    _, state = model.apply(model_vars, jnp.zeros(input_shape, jnp.float32), train=False,
                           mutable=[WINOGRAD])
    return {**variables, WINOGRAD: state[WINOGRAD]} if state.get(WINOGRAD) else variables
