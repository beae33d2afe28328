"""IDC's multi-formation: stored mosaics decode into f² full-size images each, the random real
baselines get the same format, and the synthetic set the students load is the decoded one."""

import numpy as np
import pytest
from helpers import FOLDERS, write_synthetic

from sre2l_jax import configlib, validate
from sre2l_jax.data import mosaics, sources
from sre2l_jax.data.transforms import resize_image
from sre2l_jax.formats import images as image_files


class _Arrays:
    """A random-access source over uint8 images [N, H, W, C] and labels [N]."""

    def __init__(self, images, labels):
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.class_names = [f"c{c}" for c in range(int(self.labels.max()) + 1)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def _random_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


@pytest.mark.parametrize("size,factor", [(12, 2), (13, 2), (12, 3)])
def test_decoded_cells_are_the_stitched_patches_resized_back(size, factor):
    """Mosaic k's cell j (row-major, cell_sizes geometry) is item k·f² + j, resized to size², with
    the mosaic's label."""
    cells = factor * factor
    patches = [np.full((4, 4, 1), 20 * (j + 1), np.uint8) for j in range(cells)]
    mosaic = mosaics.stitch(patches, size, factor)
    source = _Arrays(np.stack([mosaic, 255 - mosaic]), [1, 0])
    out = mosaics.Decoded(source, factor, size)
    assert len(out) == 2 * cells
    assert sources.source_labels(out).tolist() == [1] * cells + [0] * cells
    for j in range(cells):
        assert out[j]["image"].shape == (size, size, 1)
        assert np.all(out[j]["image"] == 20 * (j + 1))  # a constant cell stays that constant
        assert np.all(out[cells + j]["image"] == 255 - 20 * (j + 1))
        assert out[cells + j]["label"] == 0


def test_real_images_stitched_then_decoded_are_each_image_at_the_cell_resolution():
    """A random real subset in multi-formation: image i becomes image i resized to its cell's size
    and back (nothing of the other images in the mosaic leaks in), in the same order and class."""
    images = _random_images(8, 12)
    real = _Arrays(images, [0, 0, 0, 0, 1, 1, 1, 1])
    out = mosaics.Decoded(mosaics.Stitched(real, 2, 12), 2, 12)
    assert len(out) == 8 and sources.source_labels(out).tolist() == real.labels.tolist()
    for i in range(8):
        expected = resize_image(resize_image(images[i], (6, 6)), (12, 12))
        np.testing.assert_array_equal(out[i]["image"], expected)
    assert mosaics.decoded(real, 1, 12) is real and mosaics.stitched(real, 1, 12) is real


def test_a_mosaic_of_two_classes_or_a_bad_factor_is_an_error():
    with pytest.raises(ValueError, match="mosaics of 4 images of one class"):
        mosaics.Stitched(_Arrays(_random_images(8, 12), [0, 0, 0, 1, 1, 1, 1, 1]), 2, 12)
    with pytest.raises(ValueError, match="mosaics of 4 images of one class"):
        mosaics.Stitched(_Arrays(_random_images(6, 12), [0] * 6), 2, 12)
    with pytest.raises(ValueError, match="multi_formation=0"):
        mosaics.Decoded(_Arrays(_random_images(2, 12), [0, 1]), 0, 12)


def test_students_load_the_decoded_set_and_baselines_in_the_same_format(tmp_path):
    """`student.multi_formation=2`: relabel and validate read 4 images per stored one, and the real
    baselines draw 4 random images per stored one, stitched and decoded the same way."""
    config = configlib.base_config()
    config.data.num_classes, config.data.image_size, config.data.channels = 4, 12, 1
    config.student.multi_formation = 2
    write_synthetic(str(tmp_path), ipc=2)
    synthetic = image_files.load_synthetic(config, str(tmp_path), {"class_names": FOLDERS})
    assert len(synthetic) == 32
    assert sources.source_labels(synthetic).tolist() == np.repeat(np.arange(4), 8).tolist()
    stored = image_files.read_set(str(tmp_path / "recover" / "images"), FOLDERS, 1)[0]
    np.testing.assert_array_equal(
        synthetic[5]["image"], resize_image(mosaics.cell(stored[1], 1, 2), (12, 12)))

    train = _Arrays(_random_images(80, 12, seed=2), np.repeat(np.arange(4), 20))
    counts = np.bincount(sources.source_labels(synthetic), minlength=4)
    baseline = validate.baseline_images(config, train, counts, seed=0)
    subset = validate.real_subset(train, counts, seed=0)
    assert len(baseline) == 32
    assert sources.source_labels(baseline).tolist() == sources.source_labels(synthetic).tolist()
    for i in range(32):
        np.testing.assert_array_equal(baseline[i]["image"], resize_image(resize_image(
            subset[i]["image"], (6, 6)), (12, 12)))


@pytest.mark.parametrize("bits", [4, 2, 1])
def test_bit_planes_pack_and_unpack_every_image_at_its_nearest_level(bits):
    """Packing 8 / b real images and unpacking plane p gives image p at the nearest of the 2^b
    levels q · 255 / L (checked pixel by pixel against a float computation); plane 0 is in the
    high bits, so the stored image reads as image 0."""
    planes, levels = 8 // bits, (1 << bits) - 1
    images = _random_images(2 * planes, 12, seed=bits)
    real = _Arrays(images, [0] * planes + [1] * planes)
    packed = mosaics.Packed(real, bits, 12)
    out = mosaics.Unpacked(packed, bits, 12)
    assert len(packed) == 2 and len(out) == 2 * planes
    assert sources.source_labels(out).tolist() == real.labels.tolist()
    for i in range(2 * planes):
        x = images[i].astype(np.float64)
        nearest = np.round(x * levels / 255) * (255 / levels)
        np.testing.assert_array_equal(out[i]["image"], nearest.astype(np.uint8))
        assert np.abs(out[i]["image"].astype(int) - images[i]).max() <= 255 / levels / 2 + 0.5
    high = (packed[0]["image"] >> (8 - bits)).astype(np.float64) * (255 // levels)
    np.testing.assert_array_equal(high, out[0]["image"])


def test_bit_planes_of_mosaics_and_bad_inputs():
    """Bits and mosaics compose: a 4-bit, 2 × 2 stored image holds 8 images, each decoded at its
    cell's resolution and 4 bits, in the real subset's order; packing two classes, a bit depth
    of 3 or a resized packed image is an error."""
    images = _random_images(8, 12, seed=7)
    real = _Arrays(images, [0] * 8)
    out = mosaics.decoded(mosaics.stitched(real, 2, 12, 4), 2, 12, 4)
    assert len(out) == 8 and mosaics.images_per_stored(2, 4) == 8
    for i in range(8):
        cell = mosaics.dequantize(mosaics.quantize(resize_image(images[i], (6, 6)), 4), 4)
        np.testing.assert_array_equal(out[i]["image"], resize_image(cell, (12, 12)))
    with pytest.raises(ValueError, match="2 images of one class"):
        mosaics.Packed(_Arrays(_random_images(4, 12), [0, 1, 1, 1]), 4, 12)
    with pytest.raises(ValueError, match="bit_depth=3"):
        mosaics.decoded(real, 1, 12, 3)
    with pytest.raises(ValueError, match="never resized"):
        mosaics.Unpacked(_Arrays(_random_images(1, 14), [0]), 4, 12)[0]


def test_a_set_packed_at_another_bit_depth_is_refused():
    """recover's manifest says how its images were packed; reading them at another depth fails."""
    rded4 = {"config": {"recover": {"method": "rded", "rded_bits": 4}}}
    image_files.check_bit_depth(rded4, 4, "W/recover/images")
    image_files.check_bit_depth(None, 4, "elsewhere")  # images from elsewhere: no manifest
    with pytest.raises(ValueError, match=r"packed at 4 bits .* student.bit_depth=8"):
        image_files.check_bit_depth(rded4, 8, "W/recover/images")
    with pytest.raises(ValueError, match=r"packed at 8 bits .* student.bit_depth=2"):
        image_files.check_bit_depth({"config": {"recover": {"method": "sre2l", "rded_bits": 4}}}, 2, "W")
