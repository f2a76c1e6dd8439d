"""Evaluation of uncertainty on generated tasks: ensembles, mutual information, temperatures, corruption."""

import numpy as np
import pytest

from tfp_abml.data import episode_dataset
from tfp_abml.data.corruptions import CorruptedSampler
from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.evaluation import Ensemble, evaluate
from tfp_abml.run_config import RunConfig


def _sampler(ways=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 6, 28, 28), dtype=np.uint8)
    return EpisodeSampler(images, ways=ways, shots=1, queries=2, seed=1)


def _models(method, count):
    models = []
    for seed in range(count):
        model = RunConfig(method=method, ways=3, shots=1, queries=2, seed=seed).build_model()
        model(model.example_inputs())
        models.append(model)
    return models


def test_ensemble_is_the_mean_of_its_members_and_their_disagreement_is_its_mutual_information():
    members = _models("protonet", 2)
    inputs, _ = next(iter(episode_dataset(_sampler(), 2)))
    predictions, draws = Ensemble(members).evaluation_predictions(inputs, with_draws=True)
    expected = np.mean([m.predict_episode(inputs).numpy() for m in members], axis=0)
    np.testing.assert_allclose(predictions["prediction"].numpy(), expected, rtol=1e-6)
    assert draws["prediction"].shape == (2, *expected.shape)
    result = evaluate(Ensemble(members), _sampler(), _sampler(ways=6), tasks=4, meta_batch=2, progress=False)
    ood = result["predictions"]["prediction"]["ood"]
    assert set(ood) == {"max_probability", "entropy", "mutual_information"}
    assert result["mutual_information"]["prediction"].max() > 0  # two differently seeded members disagree
    single = evaluate(Ensemble(members[:1]), _sampler(), tasks=4, meta_batch=2, progress=False)
    assert single["mutual_information"]["prediction"].max() == pytest.approx(0.0, abs=1e-6)


def test_bayesian_model_reports_mutual_information_and_temperatures_add_scaled_rows():
    (model,) = _models("abml", 1)
    result = evaluate(model, _sampler(), _sampler(ways=6), tasks=4, meta_batch=2, samples=3, progress=False,
                      temperatures={"posterior_predictive": 2.0})
    assert set(result["predictions"]) == {"posterior_predictive", "mean_weights", "posterior_predictive_temperature_scaled"}
    assert "mutual_information" in result["predictions"]["posterior_predictive"]["ood"]
    assert "mutual_information" not in result["predictions"]["mean_weights"]["ood"]
    raw, scaled = result["probabilities"]["posterior_predictive"], result["probabilities"]["posterior_predictive_temperature_scaled"]
    assert scaled.max(-1).mean() < raw.max(-1).mean()  # T = 2 softens
    np.testing.assert_array_equal(scaled.argmax(-1), raw.argmax(-1))


def test_corrupted_tasks_change_the_predictions_but_not_the_labels():
    (model,) = _models("protonet", 1)
    clean = evaluate(model, _sampler(), tasks=4, meta_batch=2, progress=False)
    shifted = evaluate(model, CorruptedSampler(_sampler(), "contrast", 5), tasks=4, meta_batch=2, progress=False)
    np.testing.assert_array_equal(clean["labels"], shifted["labels"])
    assert not np.allclose(clean["probabilities"]["prediction"], shifted["probabilities"]["prediction"], atol=1e-4)
