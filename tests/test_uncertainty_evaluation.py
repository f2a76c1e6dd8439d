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


def _models(method, count, **settings):
    models = []
    for seed in range(count):
        model = RunConfig(method=method, ways=3, shots=1, queries=2, seed=seed, **settings).build_model()
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
    # The predictive is scored against the posterior means on the same tasks, raw and scaled alike.
    scores = result["predictions"]
    difference = scores["posterior_predictive"]["nll_difference"]
    assert difference["reference"] == "mean_weights"
    assert difference["difference"] == pytest.approx(
        scores["posterior_predictive"]["nll"] - scores["mean_weights"]["nll"], abs=1e-5)  # float32 sums apart
    assert "nll_difference" not in scores["mean_weights"]
    assert "nll_difference" not in scores["posterior_predictive_temperature_scaled"]  # no scaled mean_weights
    both = evaluate(model, _sampler(), tasks=4, meta_batch=2, samples=3, progress=False,
                    temperatures={"posterior_predictive": 2.0, "mean_weights": 2.0})["predictions"]
    assert both["posterior_predictive_temperature_scaled"]["nll_difference"]["reference"] == \
        "mean_weights_temperature_scaled"


def test_corrupted_tasks_change_the_predictions_but_not_the_labels():
    (model,) = _models("protonet", 1)
    clean = evaluate(model, _sampler(), tasks=4, meta_batch=2, progress=False)
    shifted = evaluate(model, CorruptedSampler(_sampler(), "contrast", 5), tasks=4, meta_batch=2, progress=False)
    np.testing.assert_array_equal(clean["labels"], shifted["labels"])
    assert not np.allclose(clean["probabilities"]["prediction"], shifted["probabilities"]["prediction"], atol=1e-4)


def test_uncertainty_benchmark_counts_the_conditions_where_the_predictive_is_better_beyond_its_interval():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    from uncertainty import paired_table

    def diff(value, low, high):
        return {"nll_difference": {"reference": "mean_weights", "difference": value, "ci95": [low, high]}}

    shift = {"blur": {"1": diff(-0.02, -0.03, -0.01), "2": diff(0.01, -0.01, 0.02)},
             "noise": {"1": diff(0.02, 0.01, 0.03), "2": diff(-0.04, -0.05, -0.03)}}
    rows = {"abml": {"in_distribution": diff(-0.001, -0.002, 0.0005), "shift": shift},
            "protonet": {"in_distribution": {"nll": 0.1}}}
    lines = paired_table(rows)
    (row,) = [line for line in lines if line.startswith("| abml")]
    assert "-0.0010 [-0.0020, +0.0005]" in row
    assert "| 2 / 1 / 4 |" in row  # blur 1 and noise 2 better, noise 1 worse, blur 2 inside the noise
    assert "+0.0000 / -0.0150" in row  # medians per severity: (-0.02 + 0.02) / 2 and (0.01 - 0.04) / 2
    assert not any(line.startswith("| protonet") for line in lines)
    assert paired_table({"protonet": rows["protonet"]}) == []


def test_test_time_benchmark_widens_every_posterior_scale_and_width_near_zero_gives_the_means():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    from test_time import predictions, widened

    from tfp_abml.flipout import scale_from_rho

    (model,) = _models("abml", 1, inner_steps=5)  # five steps lower an untrained model's support loss on every task
    inputs, _ = next(iter(episode_dataset(_sampler(), 2)))
    params, _ = model.adapt_and_embed_queries(inputs)
    for layer, wide in zip(params, widened(params, 3.0)):
        np.testing.assert_allclose(wide.kernel_loc.numpy(), layer.kernel_loc.numpy())
        np.testing.assert_allclose(scale_from_rho(wide.kernel_rho).numpy(), 3.0 * scale_from_rho(layer.kernel_rho).numpy(),
                                   rtol=1e-3)
        np.testing.assert_allclose(scale_from_rho(wide.bias_rho).numpy(), 3.0 * scale_from_rho(layer.bias_rho).numpy(),
                                   rtol=1e-3)
    out = predictions(model, [0.001, 50.0], samples=4)(inputs)  # 0.001: every scale at its floor
    assert set(out) == {"support nll", "means", "predictive x0.001", "predictive x50"}
    assert out["support nll"].shape == (2,)
    model.eval_inner_steps = 0  # the amortized posterior alone: the inner steps above lowered its support loss
    assert np.all(predictions(model, [1.0], samples=1)(inputs)["support nll"].numpy() > out["support nll"].numpy())
    np.testing.assert_allclose(out["predictive x0.001"].numpy(), out["means"].numpy(), atol=1e-3)
    assert np.abs(out["predictive x50"].numpy() - out["means"].numpy()).max() > 1e-2


def test_uncertainty_benchmark_redraws_its_shift_plot_from_a_results_file(tmp_path):
    import json
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import uncertainty

    cell = {"accuracy": 0.9, "nll": 0.3, "ece": 0.02, "mean_confidence": 0.9}
    row = {"in_distribution": {}, "shift": {c: {"1": cell, "2": cell} for c in ("blur", "noise")}}
    results = tmp_path / "uncertainty_omniglot_1shot-x.json"
    results.write_text(json.dumps({"results": {"5-way 1-shot": {f"model{i}": row for i in range(12)},
                                               "20-way 1-shot": {"model0": {"in_distribution": {}}}}}))
    assert uncertainty.main(["--data-dir", "unused", "--replot", str(results)]) is None
    assert (tmp_path / "uncertainty_omniglot_1shot-x_5way_shift.png").stat().st_size > 1000
    assert not (tmp_path / "uncertainty_omniglot_1shot-x_20way_shift.png").exists()  # no shift rows at 20-way
