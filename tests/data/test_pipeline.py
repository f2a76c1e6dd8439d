"""The tf.data episode pipeline on real Omniglot."""

import numpy as np
import pytest

from tfp_abml.data import episode_dataset, make_sampler
from tfp_abml.errors import UserInputError


@pytest.fixture(scope="module")
def sampler(data_dir):
    return make_sampler("omniglot", "train", ways=5, shots=2, queries=3, seed=0, data_dir=data_dir)


def test_meta_batches_have_the_model_layout(sampler):
    inputs, query_labels = next(iter(episode_dataset(sampler, meta_batch=4)))
    assert inputs["support_images"].shape == (4, 10, 28, 28, 1)
    assert inputs["query_images"].shape == (4, 15, 28, 28, 1)
    assert inputs["support_labels"].shape == (4, 10) and query_labels.shape == (4, 15)
    images = inputs["support_images"].numpy()
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() == 1.0
    assert set(np.unique(query_labels.numpy())) == set(range(5))


def test_pipeline_is_deterministic_and_starts_where_asked(sampler):
    first = [x["support_images"].numpy() for x, _ in episode_dataset(sampler, 2, episodes=6)]
    again = [x["support_images"].numpy() for x, _ in episode_dataset(sampler, 2, episodes=6)]
    later = [x["support_images"].numpy() for x, _ in episode_dataset(sampler, 2, start=2, episodes=4)]
    assert len(first) == 3
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[1:], later):
        np.testing.assert_array_equal(a, b)


def test_unknown_dataset_and_bad_meta_batch(data_dir, sampler):
    with pytest.raises(UserInputError, match="unknown dataset 'mnist'"):
        make_sampler("mnist", data_dir=data_dir)
    with pytest.raises(UserInputError, match="--meta-batch"):
        episode_dataset(sampler, meta_batch=0)


def test_trainval_draws_from_the_training_and_validation_classes(data_dir):
    """Snell et al.'s final run: one split of every training class, then every validation class."""
    train, val = (make_sampler("omniglot", split, ways=5, seed=0, data_dir=data_dir) for split in ("train", "val"))
    union = make_sampler("omniglot", "trainval", ways=60, shots=1, queries=5, seed=3, data_dir=data_dir)
    assert union.images.shape == (4112 + 688, 20, 28, 28)
    np.testing.assert_array_equal(union.images[:4112], train.images)
    np.testing.assert_array_equal(union.images[4112:], val.images)
    drawn = np.concatenate([union.sample_with_classes(i)[1] for i in range(20)])
    assert (drawn < 4112).any() and (drawn >= 4112).any()
    assert "train split and the omniglot vinyals val split" in union.split_name


def test_a_union_of_unequal_dense_splits_is_held_ragged():
    from tfp_abml.data.pipeline import _union_sampler
    from tfp_abml.data.sampling import EpisodeSampler

    rng = np.random.default_rng(0)
    a = EpisodeSampler(rng.integers(0, 255, (3, 4, 5, 5), dtype=np.uint8), 2, 1, 1, class_names=list("abc"))
    b = EpisodeSampler(rng.integers(0, 255, (2, 6, 5, 5), dtype=np.uint8), 2, 1, 1, class_names=list("de"))
    union = _union_sampler([a, b], ways=5, shots=1, queries=3, seed=0)
    assert list(union.counts) == [4, 4, 4, 6, 6] and union.class_names == list("abcde")
    np.testing.assert_array_equal(union.images[12:18], b.images[0])
    support, labels, query, _ = union.sample(0)
    assert support.shape == (5, 5, 5) and query.shape == (15, 5, 5)
    with pytest.raises(UserInputError, match="--ways 6 is larger than the 5 classes"):
        _union_sampler([a, b], ways=6, shots=1, queries=1, seed=0)
