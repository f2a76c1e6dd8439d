"""Every baseline learns on real Omniglot: query accuracy well above chance after a short run."""

import keras
import numpy as np
import pytest

from tfp_abml.data import episode_dataset, make_sampler
from tfp_abml.run_config import RunConfig

STEPS = {"protonet": 40, "matching": 40, "maml": 100, "metasgd": 100}


@pytest.fixture(scope="module")
def samplers(data_dir):
    kwargs = dict(ways=5, shots=1, queries=5, data_dir=data_dir)
    return make_sampler(split="train", seed=0, **kwargs), make_sampler(split="val", seed=1, **kwargs)


@pytest.mark.parametrize("method", sorted(STEPS))
def test_short_run_rises_well_above_chance(method, samplers, data_dir):
    train, val = samplers
    config = RunConfig(method=method, ways=5, shots=1, queries=5, inner_steps=1, inner_lr=0.4,
                       data_dir=str(data_dir))
    model = config.compiled_model()
    before = model.evaluate(episode_dataset(val, 4, episodes=32), verbose=0, return_dict=True)["accuracy"]
    model.fit(episode_dataset(train, 2), steps_per_epoch=STEPS[method], epochs=1, verbose=0, shuffle=False)
    after = model.evaluate(episode_dataset(val, 4, episodes=32), verbose=0, return_dict=True)
    assert after["accuracy"] > 0.45 and after["accuracy"] > before + 0.05, (before, after)
    probabilities = model(next(iter(episode_dataset(val, 2)))[0]).numpy()
    assert probabilities.shape == (2, 25, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_metasgd_learns_its_inner_learning_rates(samplers, data_dir):
    train, _ = samplers
    model = RunConfig(method="metasgd", ways=5, shots=1, queries=5, inner_steps=1,
                      data_dir=str(data_dir)).compiled_model()
    model(next(iter(episode_dataset(train, 2)))[0])
    initial = [keras.ops.convert_to_numpy(rate).copy() for rate in model.learning_rates]
    model.fit(episode_dataset(train, 2), steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    moved = [not np.allclose(a, keras.ops.convert_to_numpy(b)) for a, b in zip(initial, model.learning_rates)]
    assert len(moved) == len(model.network.trainable_variables) and all(moved)
