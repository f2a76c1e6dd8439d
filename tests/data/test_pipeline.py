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
