"""torch_import against real torchvision: same weights, same input → same logits and BN stats."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from sre2l_jax import checkpoint, models, torch_import

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seeded_torch():
    # torchvision draws conv weights from torch's global generator: unseeded, a rare draw put one
    # ResNet-50 BN statistic past the float32 tolerance (worst entries sit at ~0.6 of it).
    torch.manual_seed(0)


def _randomize_bn(model, seed: int = 0):
    # Fresh BNs are the identity (mean 0, var 1, weight 1, bias 0), which would hide a swapped
    # mean/var or scale/bias; random values make every one of them matter.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def _lowres(model, channels: int = 3):
    # SRe²L's modified ResNet for CIFAR/Tiny-ImageNet.
    model.conv1 = torch.nn.Conv2d(channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def _torch_forward(model, x_nhwc: np.ndarray):
    stats = []

    def hook(_module, inputs, _output):
        x = inputs[0].double()
        stats.append((x.mean(dim=(0, 2, 3)).numpy(), x.var(dim=(0, 2, 3), unbiased=False).numpy()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        logits = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()
    for h in handles:
        h.remove()
    return logits, stats


def _jax_forward(info: dict, variables: dict, x_nhwc: np.ndarray):
    model = models.create_model(info["arch"], info["num_classes"], info["width"], info["stem"])
    paths: list[str] = []

    def forward(v, x):
        logits, stats = models.apply_with_bn_stats(model, v, x)
        paths[:] = [path for path, _ in stats]  # strings cannot leave jit; recorded while tracing
        return logits, [s for _, s in stats]

    logits, stats = jax.jit(forward)(variables, x_nhwc)
    return np.asarray(logits), list(zip(paths, jax.tree.map(np.asarray, stats), strict=True))


def _input(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, size, size, channels)).astype(np.float32)


def _assert_close(actual, expected, what: str):
    # rtol 1e-4 as asked; atol relative to the tensor's magnitude covers entries that cancel to ~0.
    atol = 1e-5 * float(np.max(np.abs(expected))) + 1e-7
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=atol, err_msg=what)


def _check_matches(tmodel, size: int, channels: int = 3, expect: dict | None = None):
    variables, info = torch_import.convert_state_dict(tmodel.state_dict())
    if expect:
        assert {k: info[k] for k in expect} == expect
    x = _input(size, channels)
    t_logits, t_stats = _torch_forward(tmodel, x)
    j_logits, j_stats = _jax_forward(info, variables, x)
    _assert_close(j_logits, t_logits, "logits")
    assert len(j_stats) == len(t_stats)
    assert j_stats[0][0] == models.STEM_BN  # the stem BN, which SRe²L weights by 10, comes first
    for (path, s), (t_mean, t_var) in zip(j_stats, t_stats, strict=True):
        _assert_close(s["mean"], t_mean, f"{path} input mean")
        _assert_close(s["var"], t_var, f"{path} input var")
    return variables, info, x, t_logits


def test_resnet18_imagenet_stem_matches_torch():
    tmodel = _randomize_bn(torchvision.models.resnet18(num_classes=10))
    variables, _, _, _ = _check_matches(
        tmodel, 64, expect={"arch": "resnet18", "stem": "imagenet", "width": 64,
                            "num_classes": 10, "channels": 3})
    # The structure every other stage relies on: exactly what init_variables builds.
    model = models.create_model("resnet18", 10)
    template = models.init_variables(model, jax.random.key(0), (64, 64, 3))
    assert jax.tree.structure(variables) == jax.tree.structure(template)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, template)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(variables))


def test_resnet50_matches_torch():
    tmodel = _randomize_bn(torchvision.models.resnet50(num_classes=10), seed=1)
    _check_matches(tmodel, 32, expect={"arch": "resnet50", "stem": "imagenet"})


def test_lowres_resnet18_cifar100_matches_torch():
    tmodel = _randomize_bn(_lowres(torchvision.models.resnet18(num_classes=100)), seed=2)
    _check_matches(tmodel, 32, expect={"arch": "resnet18", "stem": "lowres", "num_classes": 100})


def test_one_channel_model(tmp_path):
    tmodel = _randomize_bn(_lowres(torchvision.models.resnet18(num_classes=10), channels=1), seed=3)
    _, _, x, t_logits = _check_matches(tmodel, 28, channels=1, expect={"channels": 1})
    pth = str(tmp_path / "gray.pth")
    torch.save(tmodel.state_dict(), pth)
    with pytest.raises(ValueError, match="1-channel images; pass mean and std"):
        torch_import.import_torchvision(pth, str(tmp_path / "bad"), image_size=28)
    meta = torch_import.import_torchvision(pth, str(tmp_path / "ok"), image_size=28,
                                           mean=(0.5,), std=(0.25,), expected_channels=1)
    assert meta["channels"] == 1 and meta["mean"] == [0.5]
    variables, _ = checkpoint.load_model(str(tmp_path / "ok"))
    _assert_close(_jax_forward(meta, variables, x)[0], t_logits, "reloaded logits")


def test_wrapped_prefixed_pth_round_trip(tmp_path):
    tmodel = _randomize_bn(_lowres(torchvision.models.resnet18(num_classes=100)), seed=4)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tmodel.state_dict().items()},
               "epoch": 7}
    pth = str(tmp_path / "ddp.pth")
    torch.save(wrapped, pth)
    out = str(tmp_path / "teacher")
    meta = torch_import.import_torchvision(pth, out, expected_num_classes=100,
                                           expected_stem="lowres", expected_arch="resnet18",
                                           image_size=32, class_names=[f"c{i}" for i in range(100)])
    variables, loaded_meta = checkpoint.load_model(out)
    assert loaded_meta == meta
    assert meta["source"] == os.path.abspath(pth) and meta["top1"] is None
    assert meta["mean"] == list(torch_import.IMAGENET_MEAN)
    x = _input(32, seed=5)
    t_logits, _ = _torch_forward(tmodel, x)
    _assert_close(_jax_forward(meta, variables, x)[0], t_logits, "reloaded logits")


def test_contradictions_raise_clearly(tmp_path):
    pth = str(tmp_path / "r18.pth")
    torch.save(_lowres(torchvision.models.resnet18(num_classes=100)).state_dict(), pth)
    out = str(tmp_path / "never")
    with pytest.raises(ValueError, match=r"3×3 lowres stem .* but the config says stem='imagenet'"):
        torch_import.import_torchvision(pth, out, expected_stem="imagenet")
    with pytest.raises(ValueError, match=r"100 classes .* but the config says num_classes=10\b"):
        torch_import.import_torchvision(pth, out, expected_num_classes=10)
    with pytest.raises(ValueError, match=r"resnet18 block layout but the config says arch='resnet50'"):
        torch_import.import_torchvision(pth, out, expected_arch="resnet50")
    with pytest.raises(ValueError, match="3 class names for 100 classes"):
        torch_import.import_torchvision(pth, out, class_names=["a", "b", "c"])
    assert not os.path.exists(out)


def test_missing_unknown_and_misshaped_keys_are_listed():
    sd = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
    sd["extra.weight"] = np.zeros(3, np.float32)
    del sd["layer2.0.downsample.1.running_var"]
    sd["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError) as e:
        torch_import.convert_state_dict(sd)
    msg = str(e.value)
    assert "missing: ['layer2.0.downsample.1.running_var']" in msg
    assert "unexpected: ['extra.weight']" in msg
    assert "layer1.0.conv2.weight: (64, 64, 1, 1) (expected (64, 64, 3, 3))" in msg
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        torch_import.convert_state_dict({"features.0.weight": np.zeros((8, 3, 3, 3))})


@pytest.mark.parametrize("name,arch", [("resnet34", "resnet34"), ("resnet101", "resnet101")])
def test_arch_inference(name, arch):
    # Shapes only: meta tensors skip the (slow) random init of the large nets.
    with torch.device("meta"):
        sd = getattr(torchvision.models, name)(num_classes=5).state_dict()
    shapes = {k: np.zeros(v.shape, np.float32) for k, v in sd.items()}
    variables, info = torch_import.convert_state_dict({"model": shapes})
    assert info == {"arch": arch, "width": 64, "stem": "imagenet", "num_classes": 5, "channels": 3}
    assert variables["params"]["fc"]["kernel"].shape == (2048 if arch == "resnet101" else 512, 5)


def test_pickled_module_falls_back_with_warning_and_cli(tmp_path):
    tmodel = _randomize_bn(_lowres(torchvision.models.resnet18(num_classes=100)), seed=6)
    pth = str(tmp_path / "full_model.pth")
    torch.save(tmodel, pth)  # a whole nn.Module: needs the unsafe loader
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class{i}\n" for i in range(100)))
    out = str(tmp_path / "cli")
    with pytest.warns(UserWarning, match="weights_only=True"):
        torch_import.main([f"--pth={pth}", f"--out={out}", "--image_size=32", "--stem=lowres",
                           f"--class_names={names}", "--mean=0.5,0.5,0.5", "--std=0.2,0.2,0.2"])
    with open(os.path.join(out, checkpoint.MODEL_META)) as f:
        meta = json.load(f)
    assert meta["class_names"][3] == "class3" and meta["std"] == [0.2, 0.2, 0.2]
    variables, _ = checkpoint.load_model(out)
    x = _input(32, seed=7)
    _assert_close(_jax_forward(meta, variables, x)[0], _torch_forward(tmodel, x)[0], "cli logits")


def test_imported_torchvision_model_serves_as_an_extra_teacher(tmp_path, tiny_teacher):
    """G-VBSM-style multi-teacher recovery with an imported torchvision ResNet-18 next to ours."""
    from helpers import tiny_config

    from sre2l_jax import recover, teachers

    tmodel = _randomize_bn(_lowres(torchvision.models.resnet18(num_classes=4), channels=1), seed=8)
    pth = str(tmp_path / "r18.pth")
    torch.save(tmodel.state_dict(), pth)
    imported = str(tmp_path / "imported")
    torch_import.import_torchvision(pth, imported, image_size=12, mean=(0.5,), std=(0.25,),
                                    expected_channels=1, class_names=["a", "b", "c", "d"])
    c = tiny_config(teacher=tiny_teacher[2], iterations=2, num_devices=2)
    c.recover.extra_teachers = (imported,)
    summary = recover.run(c, str(tmp_path / "w"))
    assert summary["images"] == 16
    both = teachers.load(c, str(tmp_path / "w"))
    ens, ens_vars = both.ensemble, both.variables
    x = _input(12, seed=9, channels=1)
    mine = tiny_teacher[0].apply(tiny_teacher[1], x, train=False)
    theirs, _ = _torch_forward(tmodel, x)
    np.testing.assert_allclose(ens.apply(ens_vars, x), (np.asarray(mine) + theirs) / 2, atol=1e-4)
