"""The SavedModels committed under savedmodels/ load with TensorFlow alone and classify real test tasks.

Their full evaluation is benchmarks/check_savedmodels.py; this guards against a commit that breaks
them (a missing variables file, a changed signature, a model that no longer learned anything).
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO

SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_committed_model_classifies_test_tasks(setting, data_dir):
    from tfp_abml.data import make_sampler

    ways, shots = SETTINGS[setting]
    serve = tf.saved_model.load(str(REPO / "savedmodels" / f"omniglot-{setting}" / "1")).signatures["serving_default"]
    # 40 px, not the models' 28: the models resize inside
    sampler = make_sampler("omniglot", "test", ways=ways, shots=shots, queries=5, seed=11, data_dir=data_dir,
                           image_size=40)
    correct = []
    for episode in range(5):
        s_img, s_lab, q_img, q_lab = sampler.sample(episode)
        probabilities = serve(support_images=tf.constant(s_img[..., None] / 255.0, tf.float32),
                              support_labels=tf.constant(s_lab, tf.int32),
                              query_images=tf.constant(q_img[..., None] / 255.0, tf.float32))["probabilities"].numpy()
        assert probabilities.shape == (ways * 5, ways)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        correct.append(probabilities.argmax(axis=1) == q_lab)
    # benchmarks/results: 89% to 98% on 600 tasks; chance is 20% (5-way) or 5% (20-way)
    assert np.mean(correct) > 0.7


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_committed_model_says_what_it_serves_and_gives_its_posterior_draws(setting):
    loaded = tf.saved_model.load(str(REPO / "savedmodels" / f"omniglot-{setting}" / "1"))
    meta = {key: value.numpy() for key, value in loaded.signatures["metadata"]().items()}
    ways = SETTINGS[setting][0]
    assert (int(meta["image_size"]), int(meta["channels"])) == (28, 1)
    # The N it serves: its own, or any from min_ways to max_ways (exports before that: "ways" only).
    assert int(meta.get("min_ways", meta["ways"])) <= ways <= int(meta.get("max_ways", meta["ways"]))
    assert meta["method"] == b"AmortizedBNN"
    images = tf.random.stateless_uniform((2 * ways, 28, 28, 1), seed=(1, 2))
    draws = loaded.signatures["posterior_draws"](support_images=images[:ways], support_labels=tf.range(ways),
                                                 query_images=images[ways:])["sample_probabilities"].numpy()
    assert draws.shape == (10, ways, ways)  # 10 posterior draws per request
    np.testing.assert_allclose(draws.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(draws[0], draws[1])  # the draws differ: a posterior, not one network
