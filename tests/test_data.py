"""Data layer tests on small generated IDX files, image trees and a tiny local TFDS build."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from helpers import write_idx
from PIL import Image

from sre2l_jax.configlib import base_config
from sre2l_jax.data import pipeline, sources, splits, transforms

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def make_idx_dir(directory, n_train=40, n_test=12, gz=True, sep="-"):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(os.path.join(directory, f"{prefix}-images{sep}idx3-ubyte{ext}"), images)
        write_idx(os.path.join(directory, f"{prefix}-labels{sep}idx1-ubyte{ext}"), labels)
        data[prefix] = (images, labels)
    return data


def write_image(path, size=(12, 10), color=(10, 20, 30), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def make_folder(root, classes=("cat", "dog", "emu"), per_class=3, split="train"):
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = ".png" if i % 2 else ".JPEG"
            write_image(os.path.join(root, split, name, f"{i}{ext}"), color=(c * 50, i, 0))


def data_cfg(**overrides):
    d = base_config().data
    d.update({"name": "test", "source": "idx", "num_classes": 10, "image_size": 28,
              "channels": 1, "mean": (0.5,), "std": (0.25,), "train_augment": "crop_flip"})
    d.update(overrides)
    return d


class ArraySource:
    """In-memory source whose label is the record index, to track records through the pipeline."""

    def __init__(self, n=50, size=8, channels=3):
        self.images = np.random.default_rng(1).integers(0, 256, (n, size, size, channels), np.uint8)
        self.class_names = [str(i) for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(i)}


# ---------------------------------------------------------------- sources

@pytest.mark.parametrize("gz,sep", [(True, "-"), (False, "-"), (False, ".")])
def test_idx_source(tmp_path, gz, sep):
    data = make_idx_dir(str(tmp_path / "digits"), gz=gz, sep=sep)
    src = sources.IdxSource(str(tmp_path / "digits"), "test")
    assert len(src) == 12 and src.class_names == [str(i) for i in range(10)]
    rec = src[5]
    assert rec["image"].shape == (28, 28, 1) and rec["image"].dtype == np.uint8
    np.testing.assert_array_equal(rec["image"][..., 0], data["t10k"][0][5])
    assert rec["label"] == 5 and isinstance(rec["label"], int)
    make_idx_dir(str(tmp_path / "fashion-mnist"))
    assert sources.IdxSource(str(tmp_path / "fashion-mnist"), "train").class_names[0] == \
        "T-shirt/top"


def test_read_idx_rejects_truncated(tmp_path):
    path = str(tmp_path / "x-images-idx3-ubyte")
    write_idx(path, np.zeros((4, 3, 3), np.uint8))
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="truncated"):
        sources.read_idx(path)


def test_real_fashion_mnist():
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"{FASHION_DIR} not installed")
    cfg = data_cfg(name="fashion_mnist", dir=FASHION_DIR)
    train, test = splits.build_source(cfg, "train"), splits.build_source(cfg, "eval")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_names[9] == "Ankle boot" and train[0]["image"].shape == (28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10


def test_image_folder(tmp_path):
    make_folder(str(tmp_path))
    src = sources.ImageFolderSource(str(tmp_path), "train")
    assert src.class_names == ["cat", "dog", "emu"] and len(src) == 9
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    rec = src[4]
    assert rec["image"].shape == (10, 12, 3) and rec["image"].dtype == np.uint8
    assert rec["label"] == 1 and tuple(rec["image"][0, 0]) == (50, 1, 0)
    gray = sources.ImageFolderSource(str(tmp_path), "train", channels=1)
    assert gray[0]["image"].shape == (10, 12, 1)
    # A given class order wins, and classes may be absent from a split.
    named = sources.ImageFolderSource(str(tmp_path), "train", ["emu", "zebra", "cat", "dog"])
    assert named.labels.tolist() == [2, 2, 2, 3, 3, 3, 0, 0, 0]
    # Folder of class folders directly (the recovered-image layout).
    direct = sources.ImageFolderSource(str(tmp_path / "train"))
    assert len(direct) == 9
    with pytest.raises(ValueError, match="not among"):
        sources.ImageFolderSource(str(tmp_path), "train", ["cat"])


def test_tiny_imagenet_layout(tmp_path):
    wnids = ["n02", "n01"]
    for w in wnids:
        for i in range(2):
            write_image(str(tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG"))
        (tmp_path / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    lines = []
    for i, w in enumerate(["n02", "n01", "n01"]):
        write_image(str(tmp_path / "val" / "images" / f"val_{i}.JPEG"))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t5\t5")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    cfg = data_cfg(source="imagefolder", dir=str(tmp_path), eval_split="val", num_classes=2,
                   channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    train, val = splits.build_source(cfg, "train"), splits.build_source(cfg, "eval")
    assert train.class_names == val.class_names == ["n01", "n02"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert val.labels.tolist() == [1, 0, 0]
    assert val[0]["image"].shape == (10, 12, 3)


def test_corrupt_image_names_file(tmp_path):
    make_folder(str(tmp_path), per_class=1)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    src = sources.ImageFolderSource(str(tmp_path), "train")
    with pytest.raises(ValueError, match="broken.png"):
        src[src.paths.index(str(bad))]


def test_subset_remaps_without_decoding(tmp_path, monkeypatch):
    make_folder(str(tmp_path), per_class=2)
    src = sources.ImageFolderSource(str(tmp_path), "train")
    decoded = []
    monkeypatch.setattr(sources, "decode_image", lambda *a: decoded.append(a) or np.zeros((2, 2, 3)))
    sub = sources.SubsetSource(src, (2, 0))
    assert not decoded
    assert sub.class_names == ["emu", "cat"] and len(sub) == 4
    assert sub.labels.tolist() == [1, 1, 0, 0]  # ordered as in the source, labels by class_ids
    assert [sub[i]["label"] for i in range(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="distinct"):
        sources.SubsetSource(src, (0, 0))


def test_build_source_subset_and_caps(tmp_path):
    data = make_idx_dir(str(tmp_path), n_train=100)
    cfg = data_cfg(dir=str(tmp_path), class_ids=(7, 3), num_classes=2)
    src = splits.build_source(cfg, "train")
    assert len(src) == 20 and src.class_names == ["7", "3"]
    assert [src[i]["label"] for i in range(4)] == [1, 0, 1, 0]  # source records 3, 7, 13, 17
    np.testing.assert_array_equal(src[2]["image"][..., 0], data["train"][0][13])
    cfg = data_cfg(dir=str(tmp_path), max_train_examples=30, max_eval_examples=5)
    capped = splits.build_source(cfg, "train")
    assert len(capped) == 30 and np.bincount(capped.labels).tolist() == [3] * 10
    again = splits.build_source(cfg, "train")
    np.testing.assert_array_equal(capped.indices, again.indices)
    assert len(splits.build_source(cfg, "eval")) == 5


def test_build_source_errors(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as err:
        splits.build_source(data_cfg(name="fashion_mnist", dir=missing), "train")
    assert missing in str(err.value) and "data.dir" in str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    make_idx_dir(str(tmp_path))
    with pytest.raises(ValueError, match="num_classes=7"):
        splits.build_source(data_cfg(dir=str(tmp_path), num_classes=7), "train")
    with pytest.raises(ValueError, match="channel"):
        splits.build_source(data_cfg(dir=str(tmp_path), channels=3), "train")
    with pytest.raises(ValueError, match="data.source"):
        splits.build_source(data_cfg(dir=str(tmp_path), source="lmdb"), "train")


def test_load_arrays(tmp_path):
    make_folder(str(tmp_path), per_class=2)
    src = sources.ImageFolderSource(str(tmp_path), "train")
    images, labels = sources.load_arrays(src, image_size=6)
    assert images.shape == (6, 6, 6, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    images, _ = sources.load_arrays(src)
    assert images.shape == (6, 10, 12, 3)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Sre2lTinyTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            # Tensor rather than Image features: encoding PNGs would need TensorFlow.
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(9), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((6, 6, 3), i, np.uint8), "label": i % 3}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    Sre2lTinyTest(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_source(tiny_tfds, tmp_path):
    src = sources.TfdsSource("sre2l_tiny_test", "train", data_dir=tiny_tfds)
    assert len(src) == 9 and src.class_names == ["a", "b", "c"] and src.channels == 3
    rec = src[4]
    assert rec["image"].shape == (6, 6, 3) and rec["label"] == int(rec["image"][0, 0, 0]) % 3
    assert np.bincount(src.labels).tolist() == [3, 3, 3]
    cfg = data_cfg(source="tfds", tfds_name="sre2l_tiny_test", dir=tiny_tfds, class_ids=(1,),
                   num_classes=1, channels=3)
    sub = splits.build_source(cfg, "eval")
    assert len(sub) == 1 and sub[0]["label"] == 0 and sub.class_names == ["b"]
    with pytest.raises(FileNotFoundError, match="download_and_prepare"):
        sources.TfdsSource("sre2l_tiny_test", "train", data_dir=str(tmp_path))
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- transforms

def test_normalize_values():
    norm = transforms.Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    image = np.array([[[0, 255, 51]]], np.uint8)
    out = norm.map({"image": image, "label": 3})
    assert out["image"].dtype == np.float32 and out["label"] == 3
    np.testing.assert_allclose(out["image"][0, 0], [-1.0, 3.0, 0.2], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        norm.map({"image": np.zeros((2, 2, 1), np.uint8)})


def test_flip_and_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (6, 5, 1), dtype=np.uint8)
    flips = {transforms.RandomHorizontalFlip().random_map({"image": image}, rng)["image"]
             [0, 0, 0] for _ in range(40)}
    assert flips == {image[0, 0, 0], image[0, -1, 0]}
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    crop = transforms.RandomCrop(4, padding=2)
    for _ in range(50):
        out = crop.random_map({"image": image}, rng)["image"]
        assert out.shape == (4, 4, 1)
        windows = [padded[i:i + 4, j:j + 4] for i in range(7) for j in range(6)]
        assert any(np.array_equal(out, w) for w in windows)


def test_rrc_params_ranges():
    rng = np.random.default_rng(0)
    for height, width in [(32, 32), (20, 50), (64, 16)]:
        for _ in range(300):
            top, left, h, w = transforms.rrc_params(rng, height, width, (0.08, 1.0))
            assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
            assert h > 0 and w > 0
    # Square images never need the fallback, so every box obeys scale and (rounded) ratio.
    for _ in range(300):
        _, _, h, w = transforms.rrc_params(rng, 64, 64, (0.25, 0.5), (3 / 4, 4 / 3))
        assert 0.25 * 0.8 <= h * w / 64 ** 2 <= 0.5 * 1.2
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 / 0.85
    # Impossible requests fall back to the centred crop with the extreme allowed ratio.
    assert transforms.rrc_params(rng, 10, 100, (0.99, 1.0)) == (0, 43, 10, 13)


def test_random_resized_crop_and_eval_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 1), dtype=np.uint8)
    out = transforms.RandomResizedCrop(16).random_map({"image": image}, rng)["image"]
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    rgb = np.repeat(image, 3, axis=-1)
    out = transforms.EvalResize(16, 20).map({"image": rgb})["image"]
    ref = np.asarray(Image.fromarray(rgb).resize((20, 26), Image.BILINEAR))[5:21, 2:18]
    np.testing.assert_array_equal(out, ref)
    assert transforms.EvalResize(16).map({"image": rgb})["image"].shape == (16, 16, 3)
    same = rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)
    assert transforms.EvalResize(16).map({"image": same})["image"] is same
    with pytest.raises(ValueError, match="train_augment"):
        transforms.train_transforms("cutout", 16)


# ---------------------------------------------------------------- pipeline

def test_train_iterator_batches_and_epochs():
    src = ArraySource(n=50)
    cfg = data_cfg(image_size=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert pipeline.steps_per_epoch(50, 8) == 6
    it = pipeline.train_iterator(cfg, src, 8, seed=0, augment="none")
    batches = [next(it) for _ in range(12)]
    assert batches[0]["image"].shape == (8, 8, 8, 3) and batches[0]["image"].dtype == np.float32
    assert batches[0]["label"].dtype == np.int32
    first = batches[0]["label"]
    np.testing.assert_allclose(batches[0]["image"], (src.images[first] / 255 - 0.5) / 0.25,
                               rtol=1e-5, atol=1e-5)
    epochs = [np.concatenate([b["label"] for b in batches[e * 6:(e + 1) * 6]]) for e in (0, 1)]
    for labels in epochs:  # 48 distinct records per epoch, the remainder dropped
        assert len(set(labels.tolist())) == 48
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_iterator_deterministic_and_resumable():
    src = ArraySource(n=40)
    cfg = data_cfg(image_size=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    a = pipeline.train_iterator(cfg, src, 8, seed=3, augment="crop_flip")
    b = pipeline.train_iterator(cfg, src, 8, seed=3, augment="crop_flip")
    c = pipeline.train_iterator(cfg, src, 8, seed=4, augment="crop_flip")
    for _ in range(3):
        x, y, z = next(a), next(b), next(c)
        np.testing.assert_array_equal(x["image"], y["image"])
        assert not np.array_equal(x["image"], z["image"])
    state = a.get_state()
    expected = [next(a) for _ in range(6)]  # crosses into the next epoch
    resumed = pipeline.train_iterator(cfg, src, 8, seed=3, augment="crop_flip")
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip"])
def test_train_host_slices_concatenate_to_global_batch(augment):
    src = ArraySource(n=70)
    cfg = data_cfg(image_size=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    single = pipeline.train_iterator(cfg, src, 16, seed=1, augment=augment,
                                     process_index=0, process_count=1)
    hosts = {n: [pipeline.train_iterator(cfg, src, 16, seed=1, augment=augment,
                                         process_index=p, process_count=n) for p in range(n)]
             for n in (2, 4)}
    for _ in range(6):  # 4 steps per epoch: covers an epoch boundary
        want = next(single)
        for its in hosts.values():
            parts = [next(it) for it in its]
            assert parts[0]["image"].shape[0] == 16 // len(its)
            for key in ("image", "label"):
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])


def test_eval_batches_padding_and_host_slices():
    src = ArraySource(n=21, size=10)
    cfg = data_cfg(image_size=8, eval_resize=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    full = list(pipeline.eval_batches(cfg, src, 8, process_index=0, process_count=1))
    assert len(full) == 3 and full[0]["image"].shape == (8, 8, 8, 3)
    mask = np.concatenate([b["mask"] for b in full])
    labels = np.concatenate([b["label"] for b in full])
    assert mask.dtype == bool and mask.sum() == 21 and not mask[21:].any()
    assert labels[:21].tolist() == list(range(21)) and labels.dtype == np.int32
    pad = full[-1]["image"][~full[-1]["mask"]]
    np.testing.assert_allclose(pad, -2.0)  # zero pixels, normalized
    parts = [list(pipeline.eval_batches(cfg, src, 8, process_index=p, process_count=2))
             for p in range(2)]
    for i, want in enumerate(full):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][i][key], parts[1][i][key]]), want[key])
    with pytest.raises(ValueError, match="multiple"):
        pipeline.eval_batches(cfg, src, 9, process_index=0, process_count=2)


def test_fashion_like_idx_end_to_end(tmp_path):
    make_idx_dir(str(tmp_path), n_train=64, n_test=10)
    cfg = data_cfg(dir=str(tmp_path))
    train = splits.build_source(cfg, "train")
    batch = next(pipeline.train_iterator(cfg, train, 32, seed=0))
    assert batch["image"].shape == (32, 28, 28, 1)
    evals = list(pipeline.eval_batches(cfg, splits.build_source(cfg, "eval"), 8))
    assert [int(b["mask"].sum()) for b in evals] == [8, 2]
