"""Students read their images through Grain: the same batches as the set held in memory, on any
device count, while reading only a few batches ahead of training; a small set is decoded once."""

import numpy as np
import pytest
from PIL import Image

from sre2l_jax import parallel
from sre2l_jax.data import sources
from sre2l_jax.data.transforms import EvalResize
from sre2l_jax.formats import images as image_files
from sre2l_jax.student import data as student_data
from sre2l_jax.student.plans import batch_bounds, epoch_order


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A recovered-set layout: 4 class folders × 13 random 12×12 gray PNGs."""
    root = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(0)
    for c in range(4):
        for k in range(13):
            path = root / image_files.image_file(f"c{c}", k, 13, "png")
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
    return image_files.synthetic_source(str(root), ["c0", "c1", "c2", "c3"], 1)[0]


@pytest.mark.parametrize("devices,held", [(1, True), (4, True), (4, False)])
def test_batches_equal_the_set_in_memory(folder, devices, held):
    """Every batch of an epoch: the images and labels the in-memory set gives at its positions,
    whether the student data holds the decoded set or streams it through Grain."""
    images, labels = sources.load_arrays(folder)
    data = student_data.StudentData(folder, 12, parallel.make_mesh(devices), batch_size=20,
                                    in_memory_bytes=student_data.IN_MEMORY_BYTES if held else 0)
    assert (data.cached is not None) == held
    order = epoch_order(3, 1, len(folder))
    seen = []
    for b, batch_images, batch_labels in data.epoch(order):
        s, e = batch_bounds(len(folder), 20)[b]
        np.testing.assert_array_equal(np.asarray(batch_images), images[order[s:e]])
        np.testing.assert_array_equal(np.asarray(batch_labels), labels[order[s:e]])
        if devices > 1:  # split over the devices, or (a last partial batch) replicated
            assert batch_images.sharding.is_fully_replicated == ((e - s) % devices != 0)
        seen.append(b)
    assert seen == [0, 1, 2]  # 52 images: 20, 20 and a last partial batch of 12


def test_a_real_subset_is_fitted_like_the_eval_transform(folder):
    subset = sources.IndexedSource(folder, np.array([5, 0, 17]), sources.source_labels(folder)[[5, 0, 17]],
                                   folder.class_names)
    data = student_data.StudentData(subset, 8, parallel.make_mesh(1), batch_size=3)
    (_, batch, _), = list(data.epoch(np.arange(3)))
    fit = EvalResize(8, 8)
    want = np.stack([fit.map(folder[i])["image"] for i in (5, 0, 17)])
    np.testing.assert_array_equal(np.asarray(batch), want)


class _Counting:
    """A source that counts the records read, to see how far ahead of training Grain reads."""

    def __init__(self, source):
        self.source, self.reads = source, 0
        self.class_names, self.labels = source.class_names, source.labels

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.reads += 1
        return self.source[i]


def test_memory_is_bounded_by_the_prefetch_not_the_set(folder):
    """A set several times the read-ahead (52 images, batches of 4, 2 batches prefetched) trains
    without ever being read whole ahead of the step: at most (consumed + prefetch + 1) batches."""
    counting = _Counting(folder)
    data = student_data.StudentData(counting, 12, parallel.make_mesh(1), batch_size=4, prefetch=2,
                                    in_memory_bytes=len(folder) * 12 * 12 * 3 - 1)  # just too big
    most_ahead = 0
    for b, _, _ in data.epoch(np.arange(len(folder))):
        most_ahead = max(most_ahead, counting.reads - 4 * (b + 1))
        assert counting.reads <= 4 * (b + 1 + 2 + 1) < len(folder) or b >= 9, (b, counting.reads)
    assert counting.reads == len(folder) and most_ahead <= 4 * 3
    assert data.cached is None  # nothing holds the decoded set


def test_a_small_set_is_decoded_once(folder):
    counting = _Counting(folder)
    data = student_data.StudentData(counting, 12, parallel.make_mesh(1), batch_size=4)
    for epoch in range(3):
        assert len(list(data.epoch(epoch_order(0, epoch, len(folder))))) == 13
    assert counting.reads == len(folder)
