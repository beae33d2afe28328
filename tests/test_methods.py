"""The later methods in the engine: RDED selection, class-conditional statistics (EDC), backbones."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TESTS, cli_env, idx_config, numpy_forward_stats, pngs, tiny_config, write_idx_dataset

from sre2l_jax import squeeze, teachers
from sre2l_jax.data import mosaics, sources, splits
from sre2l_jax.data.transforms import resize_image
from sre2l_jax.models import apply_with_bn_stats
from sre2l_jax.recover import class_stats, objective, rded


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """4 classes × 12 train images of 12² (labels i mod 4), a small test split."""
    return write_idx_dataset(tmp_path_factory.mktemp("methods_idx"), 48, 8, 12, seed=7)


def test_class_statistics_equal_a_numpy_per_class_computation(tmp_path, data_dir, tiny_teacher):
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path)
    got = class_stats.compute(c, str(tmp_path), 0, model, variables, save_every=1)
    train = splits.build_source(c.data, "train")
    images = np.stack([train[i]["image"] for i in range(len(train))]).astype(np.float64)
    x = (images / 255.0 - 0.5) / 0.25
    labels = sources.source_labels(train)
    v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    for cls in range(4):
        want = numpy_forward_stats(v64, x[labels == cls])  # pooled over the class's images, H, W
        assert len(want) == len(got) == 6
        for layer, (mean, var, _, _) in enumerate(want):
            np.testing.assert_allclose(got[layer]["mean"][cls], mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got[layer]["var"][cls], var, rtol=1e-4, atol=1e-5)
    # Cached: a second call reads the file (and the settings claim keeps other data out).
    again = class_stats.compute(c, str(tmp_path), 0, model, variables)
    np.testing.assert_array_equal(again[3]["var"], got[3]["var"])


def test_alpha_zero_is_sre2l_and_alpha_one_is_class_conditional(tiny_teacher):
    model, variables, _ = tiny_teacher
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 12, 1)), jnp.float32)
    labels = jnp.asarray([0, 1, 1, 3])
    _, stats = apply_with_bn_stats(model, variables, x)
    rng = np.random.default_rng(1)
    cstats = [{"mean": jnp.asarray(rng.normal(size=(4, s["mean"].shape[0])), jnp.float32),
               "var": jnp.asarray(rng.uniform(0.5, 2, (4, s["var"].shape[0])), jnp.float32)}
              for _, s in stats]
    sre2l = objective.bn_matching_loss(stats, 10.0)
    assert float(objective.bn_matching_loss(stats, 10.0, cstats, labels, 0.0)) == float(sre2l)
    by_hand = 0.0
    for i, (_, s) in enumerate(stats):
        tm = np.mean(np.asarray(cstats[i]["mean"])[[0, 1, 1, 3]], 0)
        tv = np.mean(np.asarray(cstats[i]["var"])[[0, 1, 1, 3]], 0)
        by_hand += (10.0 if i == 0 else 1.0) * (np.linalg.norm(np.asarray(s["var"]) - tv)
                                                + np.linalg.norm(np.asarray(s["mean"]) - tm))
    np.testing.assert_allclose(float(objective.bn_matching_loss(stats, 10.0, cstats, labels, 1.0)), by_hand,
                               rtol=1e-5)
    half = objective.bn_matching_loss(stats, 10.0, cstats, labels, 0.5)
    np.testing.assert_allclose(float(half), 0.5 * float(sre2l) + 0.5 * by_hand, rtol=1e-5)


def test_rded_keeps_the_lowest_loss_crops(data_dir, tiny_teacher):
    """Selection against brute force: every crop scored alone, argmin per image, best images."""
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path, rded_pool=8, rded_crops=3, ipc=2)
    sel = rded.Selector(c, model, variables)
    pool, boxes = sel.candidates(1)
    assert len(pool) == 8 and all(sel.labels[pool] == 1)
    losses, _ = sel.scores(1, pool, boxes)
    brute = np.zeros((8, 3))
    for i, image in enumerate(pool):
        for j, box in enumerate(boxes[i]):
            crop = sel.scorer.normalize(rded.crop_to(sel.load(image), box, 12))[None]
            logits = model.apply(variables, jnp.asarray(crop), train=False)
            brute[i, j] = -float(jax.nn.log_softmax(logits)[0, 1])
    np.testing.assert_allclose(losses, brute, rtol=1e-4, atol=1e-5)
    out = sel.class_images(1, 2)
    best = np.argsort(brute.min(1), kind="stable")[:2]
    assert [e["sources"][0] for e in out] == [int(pool[i]) for i in best]
    assert [e["boxes"][0] for e in out] == [list(boxes[i][int(np.argmin(brute[i]))]) for i in best]


def test_rded_decoded_view_scores_each_crop_as_a_multi_formation_student_sees_it(data_dir, tiny_teacher):
    """With f = 2 and rded_score_view=decoded a crop is scored at size // 2 resized back to size
    (brute force), not zero-padded; the stored image holds the chosen patches, each cell decoding
    to the view that was scored."""
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path, rded_pool=8, rded_crops=2, ipc=1, rded_factor=2,
                   rded_score_view="decoded")
    sel = rded.Selector(c, model, variables)
    pool, boxes = sel.candidates(2)
    losses, _ = sel.scores(2, pool, boxes)
    brute = np.zeros((8, 2))
    for i, image in enumerate(pool):
        for j, box in enumerate(boxes[i]):
            view = resize_image(rded.crop_to(sel.load(image), box, 6), (12, 12))
            logits = model.apply(variables, jnp.asarray(sel.scorer.normalize(view)[None]), train=False)
            brute[i, j] = -float(jax.nn.log_softmax(logits)[0, 2])
    np.testing.assert_allclose(losses, brute, rtol=1e-4, atol=1e-5)
    (out,) = sel.class_images(2, 1)
    best = np.argsort(brute.min(1), kind="stable")[:4]
    assert out["sources"] == [int(pool[i]) for i in best]
    for j, i in enumerate(best):
        view = resize_image(rded.crop_to(sel.load(pool[i]), boxes[i][int(np.argmin(brute[i]))], 6), (12, 12))
        np.testing.assert_array_equal(resize_image(mosaics.cell(out["image"], j, 2), (12, 12)), view)


def test_rded_bit_planes_score_quantized_crops_and_pack_the_chosen_ones(data_dir, tiny_teacher):
    """With rded_bits=4 a crop is scored at 4 bits (brute force) and each stored image packs two
    chosen crops, plane p holding the (p·ipc + k)-th best: unpacked, each is its crop at 4 bits."""
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path, rded_pool=8, rded_crops=2, ipc=2, rded_bits=4)
    sel = rded.Selector(c, model, variables)
    pool, boxes = sel.candidates(3)
    losses, _ = sel.scores(3, pool, boxes)
    quantized = [[mosaics.dequantize(mosaics.quantize(rded.crop_to(sel.load(i), box, 12), 4), 4)
                  for box in boxes[n]] for n, i in enumerate(pool)]
    brute = np.array([[-float(jax.nn.log_softmax(model.apply(
        variables, jnp.asarray(sel.scorer.normalize(q)[None]), train=False))[0, 3]) for q in row]
        for row in quantized])
    np.testing.assert_allclose(losses, brute, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="recover.rded_bits=3"):
        rded.Selector(idx_config(data_dir, path, rded_bits=3), model, variables)
    with pytest.raises(ValueError, match="needs recover.image_format=png"):
        rded.Selector(idx_config(data_dir, path, rded_bits=4, image_format="jpeg"), model, variables)
    out = sel.class_images(3, 2)
    best = np.argsort(brute.min(1), kind="stable")[:4]
    for k, e in enumerate(out):
        assert e["sources"] == [int(pool[best[k]]), int(pool[best[2 + k]])]
        for p in range(2):
            i = best[p * 2 + k]
            np.testing.assert_array_equal(mosaics.unpack(e["image"], p, 4),
                                          quantized[i][int(np.argmin(brute[i]))])


def test_cluster_selection_takes_the_lowest_loss_image_of_each_mode():
    """Three well-separated feature blobs: one pick per blob, the blob's lowest-loss member, and the
    picks ordered by loss; the two lowest-loss images overall sit in one blob, so plain RDED
    selection would take both."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blob = np.repeat(np.arange(3), 7)
    features = centres[blob] + rng.normal(0, 0.3, (21, 2))
    loss = rng.uniform(1.0, 2.0, 21)
    loss[[0, 1]] = [0.1, 0.2]  # both in blob 0
    picks = rded.cluster_select(loss, features, 3, np.random.default_rng(1))
    assert sorted(blob[picks].tolist()) == [0, 1, 2] and picks[0] == 0
    for p in picks:
        assert loss[p] == loss[blob == blob[p]].min()
    assert np.all(np.diff(loss[picks]) > 0)
    assert rded.select(loss[:, None], 3)[1].tolist()[:2] == [0, 1]
    medoids = rded.cluster_select(loss, features, 3, np.random.default_rng(1), medoid=True)
    for p in medoids:
        members = np.flatnonzero(blob == blob[p])
        dist = ((features[members] - features[members].mean(0)) ** 2).sum(1)
        assert p == members[np.argmin(dist)]
    assert sorted(blob[medoids].tolist()) == [0, 1, 2]


def test_median_selection_takes_the_images_around_the_median_loss(data_dir, tiny_teacher):
    model, variables, path = tiny_teacher
    c = idx_config(data_dir, path, rded_pool=8, rded_crops=2, ipc=2, rded_select="median")
    sel = rded.Selector(c, model, variables)
    losses = np.array([[5.0, 6.0], [0.5, 0.1], [3.0, 2.0], [9.0, 8.0], [1.0, 4.0], [7.0, 7.5],
                       [2.5, 3.5], [6.5, 6.0]])
    best_crop, order = sel.order(0, losses, np.zeros((8, 2, 3)), 2)
    assert best_crop.tolist() == [0, 1, 1, 1, 0, 0, 0, 1]
    assert order.tolist() == [6, 0]  # best losses sorted: 0.1 1.0 2.0 2.5 | 5.0 6.0 7.0 8.0 → 2.5, 5.0


@pytest.mark.parametrize("size", [12, 13])
def test_stitch_puts_each_patch_in_its_cell(size):
    patches = [np.full((5, 5, 1), 10 * (k + 1), np.uint8) for k in range(4)]
    image = mosaics.stitch(patches, size, 2)
    h = mosaics.cell_sizes(size, 2)
    assert image.shape == (size, size, 1) and h[0] + h[1] == size and h[0] >= h[1]
    assert np.all(image[:h[0], :h[0]] == 10) and np.all(image[:h[0], h[0]:] == 20)
    assert np.all(image[h[0]:, :h[0]] == 30) and np.all(image[h[0]:, h[0]:] == 40)
    assert rded.select(np.array([[3.0, 1.0], [0.5, 2.0], [4.0, 4.0]]), 2)[1].tolist() == [1, 0]


def _cli(workdir, teacher, data_dir, devices, extra=(), env_extra=None):
    config = f"{TESTS}/tiny_config.py:recover,teacher={teacher},num_devices={devices}"
    args = [sys.executable, "-m", "sre2l_jax.main", f"--config={config}", f"--workdir={workdir}",
            "--config.data.source=idx", f"--config.data.dir={data_dir}", "--config.data.class_ids=(0,1,2,3)",
            *extra]
    return subprocess.Popen(args, env=cli_env(max(devices, 1), **(env_extra or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("method", ["rded", "edc"])
def test_method_images_identical_on_1_and_2_devices_and_after_kill(tmp_path, data_dir, tiny_teacher, method):
    """RDED (per class; with the k-means selection, which scores as plain RDED does and adds the
    clustering) and EDC-style recovery (real init + class-conditional BN loss): the same PNGs on 1
    and 2 devices, and when killed mid-run and resumed."""
    extra = {"rded": ["--config.recover.method=rded", "--config.recover.rded_pool=6",
                      "--config.recover.rded_crops=2", "--config.recover.rded_select=cluster"],
             "edc": ["--config.recover.init=real_random", "--config.recover.alpha_class=0.5",
                     "--config.recover.iterations=12"]}[method]
    teacher = tiny_teacher[2]
    for devices in (1, 2):
        p = _cli(tmp_path / f"d{devices}", teacher, data_dir, devices, extra)
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    ref = pngs(tmp_path / "d1" / "recover" / "images")
    assert len([f for f in ref if f.endswith(".png")]) == 16
    assert pngs(tmp_path / "d2" / "recover" / "images") == ref
    # Killed after its first unit of progress (a class for RDED, a checkpoint for EDC), resumed.
    if method == "rded":
        p = _cli(tmp_path / "killed", teacher, data_dir, 2, extra)
        for line in p.stdout:
            if "class 1/4" in line:
                p.kill()
                break
    else:
        p = _cli(tmp_path / "killed", teacher, data_dir, 2, extra, {"SRE2L_FAULT_KILL_AFTER_SAVES": "1"})
    p.communicate(timeout=600)
    assert p.returncode == -9
    assert not os.path.exists(tmp_path / "killed" / "recover" / "manifest.json")
    p = _cli(tmp_path / "killed", teacher, data_dir, 1, extra)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert pngs(tmp_path / "killed" / "recover" / "images") == ref
    manifest = json.load(open(tmp_path / "killed" / "recover" / "manifest.json"))
    assert len(manifest["images"]) == 16 and all("init_sources" in e for e in manifest["images"])


def test_backbones_are_trained_teachers_in_the_cycle(tmp_path):
    c = tiny_config("squeeze")
    c.squeeze.backbones = ("resnet18:4:1", "_tiny:8:2")
    b1 = squeeze.backbone_config(c, 1)
    assert (b1.model.arch, b1.model.width, b1.squeeze.epochs, b1.seed) == ("_tiny", 8, 2, c.seed + 2)
    assert b1.squeeze.backbones == ()
    c.squeeze.backbones = ("resnet18-4",)
    with pytest.raises(ValueError, match="not 'arch:width:epochs'"):
        squeeze.backbone_config(c, 0)
    c.squeeze.backbones, c.recover.extra_teachers = ("a:1:1", "b:2:2"), ("/x",)
    paths = teachers.all_paths(c, str(tmp_path))
    backbones = tmp_path / "squeeze" / "backbones"
    assert paths == [str(tmp_path / "squeeze" / "model"), str(backbones / "0" / "model"),
                     str(backbones / "1" / "model"), "/x"]
    c.recover.teacher = "/elsewhere"  # another workdir's teacher: its backbones are not ours
    assert teachers.all_paths(c, str(tmp_path)) == ["/elsewhere", "/x"]
