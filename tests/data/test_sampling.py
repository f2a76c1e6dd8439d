"""Episode sampling: shapes, labels, classes without replacement, seeds, errors."""

import numpy as np
import pytest

from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.errors import UserInputError


def _tagged_images(classes=30, examples=20, size=4):
    """Class c, example e is filled with the value c * examples + e: every image says where it came from."""
    values = np.arange(classes * examples, dtype=np.int64).reshape(classes, examples)
    return np.broadcast_to(values[..., None, None], (classes, examples, size, size)).astype(np.int64)


def test_episode_shapes_and_labels():
    sampler = EpisodeSampler(_tagged_images(), ways=5, shots=3, queries=4, seed=0)
    s_img, s_lab, q_img, q_lab = sampler.sample(0)
    assert s_img.shape == (15, 4, 4) and q_img.shape == (20, 4, 4)
    assert s_lab.dtype == np.int32 and sorted(set(s_lab)) == list(range(5))
    assert np.bincount(s_lab).tolist() == [3] * 5 and np.bincount(q_lab).tolist() == [4] * 5


def test_classes_and_examples_drawn_without_replacement():
    sampler = EpisodeSampler(_tagged_images(), ways=10, shots=5, queries=15, seed=3)
    for index in range(50):
        s_img, s_lab, q_img, q_lab = sampler.sample(index)
        tags = np.concatenate([s_img[:, 0, 0], q_img[:, 0, 0]])
        labels = np.concatenate([s_lab, q_lab])
        assert len(set(tags)) == len(tags)  # no image twice in a task
        class_of = tags // 20
        for label in range(10):  # one class per label, a different one for each label
            assert len(set(class_of[labels == label])) == 1
        assert len(set(class_of)) == 10


def test_labels_are_assigned_in_a_random_class_order():
    sampler = EpisodeSampler(_tagged_images(), ways=5, shots=1, queries=1, seed=0)
    orders = {tuple(np.argsort(sampler.sample(i)[0][:, 0, 0])) for i in range(20)}
    assert len(orders) > 1


def test_same_seed_same_tasks_other_seed_other_tasks():
    images = _tagged_images()
    a, b, c = (EpisodeSampler(images, 5, 1, 5, seed=s) for s in (7, 7, 8))
    for index in (0, 1, 99):
        for x, y in zip(a.sample(index), b.sample(index)):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample(0)[0], c.sample(0)[0])
    assert not np.array_equal(a.sample(0)[0], a.sample(1)[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(ways=31, shots=1, queries=1), r"--ways 31 is larger than the 30 classes"),
    (dict(ways=5, shots=10, queries=11), r"--shots 10 \+ --queries 11 = 21 is more than the 20 examples"),
    (dict(ways=1, shots=1, queries=1), r"--ways must be an integer >= 2"),
    (dict(ways=5, shots=0, queries=1), r"--shots must be an integer >= 1"),
    (dict(ways=5, shots=1, queries=0), r"--queries must be an integer >= 1"),
])
def test_impossible_requests_are_explained(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        EpisodeSampler(_tagged_images(), **kwargs)
