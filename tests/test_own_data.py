"""Your own data in one command, channel conversion, the recovery sanity check, user errors, TensorBoard."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, TINY, tiny_config, write_idx
from PIL import Image

from sre2l_jax import checkpoint, models, recover, squeeze, teachers
from sre2l_jax.data import sources, splits


def _tree(root, mode: str, n_train: int = 40, n_val: int = 6, size: int = 16):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(4):
            os.makedirs(root / split / f"class_{c}", exist_ok=True)
            for i in range(n):
                a = (rng.integers(0, 60, (size, size, 3)) + c * 50).astype(np.uint8)
                image = Image.fromarray(a if mode == "RGB" else a[..., 0], mode)
                image.save(root / split / f"class_{c}" / f"{i}.png")


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "sre2l_jax.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_imagefolder_config_runs_the_pipeline_with_no_other_option(tmp_path, mode):
    _tree(tmp_path / "data", mode)
    out = _cli(f"--config=configs/imagefolder.py:all,runlocal,data_dir={tmp_path / 'data'}",
               f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.load(open(tmp_path / "w" / "squeeze" / "model" / "model.json"))
    assert meta["channels"] == (1 if mode == "L" else 3) and meta["num_classes"] == 4
    assert meta["class_names"] == [f"class_{c}" for c in range(4)] and meta["image_size"] == 16
    assert len(meta["mean"]) == meta["channels"] and all(0 < m < 1 for m in meta["mean"])
    assert os.path.exists(tmp_path / "w" / "validate" / "summary.json")
    assert "distilled-set student" in out.stdout


def test_a_tree_without_val_holds_out_a_fraction(tmp_path):
    from sre2l_jax.data import folder_info

    _tree(tmp_path / "data", "L", n_val=0)
    os.rmdir(tmp_path / "data" / "val" / "class_0")  # `val/` without classes is no split
    for c in range(1, 4):
        os.rmdir(tmp_path / "data" / "val" / f"class_{c}")
    os.rmdir(tmp_path / "data" / "val")
    info = folder_info.inspect(str(tmp_path / "data"))
    assert info.eval_split == "" and info.image_size == 16 and info.channels == 1
    import importlib.util

    spec = importlib.util.spec_from_file_location("if", os.path.join(REPO, "configs", "imagefolder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"all,data_dir={tmp_path / 'data'}")
    train, val = splits.build_source(c.data, "train"), splits.build_source(c.data, "eval")
    assert len(train) == 4 * 36 and len(val) == 4 * 4
    assert not set(train.indices.tolist()) & set(val.indices.tolist())


def test_gray_replicated_to_rgb_is_the_gray_batch_repeated(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), rng.integers(0, 256, (8, 12, 12), dtype=np.uint8))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), (np.arange(8) % 4).astype(np.uint8))
    c = tiny_config()
    c.data.source, c.data.dir, c.data.class_ids, c.data.channels = "idx", str(tmp_path), (0, 1, 2, 3), 3
    with pytest.raises(ValueError, match="data.convert_channels=True"):
        splits.build_source(c.data, "train")
    c.data.convert_channels = True
    rgb = splits.build_source(c.data, "train")
    c.data.channels, c.data.convert_channels = 1, False
    gray = splits.build_source(c.data, "train")
    for i in range(len(gray)):
        assert rgb[i]["image"].shape == (12, 12, 3)
        np.testing.assert_array_equal(rgb[i]["image"], np.repeat(gray[i]["image"], 3, axis=-1))


def test_an_rgb_teacher_trained_on_replicated_gray_serves_gray_data(tmp_path, tiny_teacher):
    """Its conv1 is the gray teacher's kernel split over three channels: on replicated gray images
    it computes the gray teacher's logits exactly, and recovery runs through the option."""
    model, variables, _ = tiny_teacher
    rgb_vars = jax.tree.map(np.array, variables)
    k = rgb_vars["params"]["conv1"]["kernel"]
    rgb_vars["params"]["conv1"]["kernel"] = np.repeat(k / 3.0, 3, axis=2)
    rgb_path = str(tmp_path / "rgb_teacher")
    checkpoint.save_model(rgb_path, rgb_vars, {**TINY, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
                                               "class_names": list("abcd"), "top1": None, "source": "t"})
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 12, 12, 1)), jnp.float32)
    rgb_model = models.create_model("_tiny", 4, width=4, stem="lowres")
    np.testing.assert_allclose(rgb_model.apply(rgb_vars, jnp.repeat(x, 3, -1)), model.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    c = tiny_config(teacher=rgb_path, iterations=3)
    with pytest.raises(ValueError, match="data.convert_channels=True"):
        teachers.load(c, str(tmp_path / "w"))
    c.data.channels, c.data.convert_channels = 3, True
    c.data.mean, c.data.std = (0.5,) * 3, (0.25,) * 3
    assert recover.run(c, str(tmp_path / "w"))["images"] == 16


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """4 classes told apart by brightness, and the tiny model squeezed on them."""
    root = tmp_path_factory.mktemp("bright")
    rng = np.random.default_rng(3)
    labels = np.arange(256) % 4
    images = np.clip(labels[:, None, None] * 60 + rng.integers(0, 40, (256, 12, 12)), 0, 255).astype(np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(str(root / f"{prefix}-images-idx3-ubyte"), images)
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte"), labels.astype(np.uint8))
    c = tiny_config("squeeze")
    c.data.source, c.data.dir, c.data.class_ids, c.data.train_augment = "idx", str(root), (0, 1, 2, 3), "none"
    c.squeeze.epochs, c.squeeze.batch_size, c.squeeze.lr, c.squeeze.warmup_epochs = 10, 32, 0.05, 0
    workdir = str(tmp_path_factory.mktemp("bright_w"))
    assert squeeze.run(c, workdir)["top1"] > 90
    return c, workdir


def test_the_low_accuracy_warning_fires_on_a_bad_recipe_only(learnable, capsys, tmp_path):
    c, workdir = learnable
    c.recover.teacher = teachers.default_path(c, workdir)
    c.recover.alpha_bn, c.recover.lr, c.recover.iterations = 0.01, 0.25, 12  # a sound recipe
    good = recover.run(c, str(tmp_path / "good"))
    assert good["teacher_accuracy"] >= 50 and not good["low_teacher_accuracy"]
    assert "WARNING recover" not in capsys.readouterr().err
    c.recover.alpha_bn, c.recover.lr, c.recover.iterations = 1e4, 0.25, 12  # BN loss drowns the CE
    bad = recover.run(c, str(tmp_path / "bad"))
    err = capsys.readouterr().err
    assert bad["low_teacher_accuracy"] and f"only {bad['teacher_accuracy']:.1f}%" in err
    assert "recover.alpha_bn" in err
    manifest = json.load(open(tmp_path / "bad" / "recover" / "manifest.json"))
    assert manifest["summary"]["low_teacher_accuracy"] is True


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, tiny_teacher):
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_teacher[2], broken)
    for dirpath, _, files in os.walk(broken / "variables"):
        for f in files:
            path = os.path.join(dirpath, f)
            if os.path.getsize(path) > 64:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
    tiny = os.path.join(REPO, "tests", "tiny_config.py")
    cases = {
        "truncated checkpoint": ([f"--config={tiny}:recover,teacher={broken}"], "corrupt or truncated"),
        "unknown key": (["--config=configs/fashion_mnist.py:squeeze", "--config.squeeze.epochz=3"],
                        "Did you mean"),
        "missing data": (["--config=configs/fashion_mnist.py:squeeze", "--config.data.dir=/nowhere"],
                         "/nowhere"),
        "class count": (["--config=configs/fashion_mnist.py:squeeze", "--config.data.num_classes=7"],
                        "data.num_classes=10"),
    }
    for name, (args, expect) in cases.items():
        out = _cli(*args, f"--workdir={tmp_path / name.replace(' ', '_')}", timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (name, out.stderr[-2000:])
        assert lines[0].startswith("error: ") and expect in lines[0], (name, lines)
    if os.path.isdir(sources.FASHION_MNIST_DIR):  # with --debug the traceback is back
        out = _cli("--config=configs/fashion_mnist.py:squeeze", "--config.data.num_classes=7", "--debug",
                   f"--workdir={tmp_path / 'debug'}", timeout=300)
        assert out.returncode != 0 and "Traceback" in out.stderr


def test_a_class_folder_without_images_is_named(tmp_path):
    from sre2l_jax.data import folder_info

    _tree(tmp_path, "L", n_train=2, n_val=1)
    os.makedirs(tmp_path / "train" / "class_9")
    with pytest.raises(ValueError, match=r"class folders without images \['class_9'\]"):
        folder_info.inspect(str(tmp_path))
    os.rmdir(tmp_path / "train" / "class_9")
    assert len(folder_info.inspect(str(tmp_path)).class_names) == 4
