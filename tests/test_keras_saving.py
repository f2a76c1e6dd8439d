"""Keras-native saving: ``model.save("x.keras")`` and ``keras.saving.load_model`` round-trip every method.

The loaded model must predict what the saved one predicts, after its weights were moved away from
their initial values (so that a file that reloads fresh weights fails), and be the same class.
"""

import numpy as np
import pytest

from tfp_abml.run_config import METHODS, RunConfig

CASES = [dict(method=m) for m in METHODS] + [dict(method="abml", posterior="paper", task_encoding="concat",
                                                  learn_inner_lr=False),
                                             dict(method="abml", residual_head=False)]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_keras_file_round_trip_gives_the_same_predictions(tmp_path, settings):
    import keras
    import tensorflow as tf

    config = RunConfig(ways=3, shots=1, queries=2, inner_steps=1, eval_samples=3, seed=0, **settings).validate()
    model = config.build_model()
    inputs = config.example_inputs()
    model(inputs)
    rng = np.random.default_rng(0)
    for variable in model.variables:  # every variable away from its initial value
        if "float" in str(variable.dtype):
            variable.assign(variable + 0.01 * rng.standard_normal(variable.shape).astype(variable.dtype))
    images = tf.constant(rng.random((1, 6, 28, 28, 1)), tf.float32)
    task = {"support_images": images[:, :3], "support_labels": tf.constant([[2, 0, 1]], tf.int32),
            "query_images": images[:, 3:]}
    path = tmp_path / "model.keras"
    model.save(path)  # before predicting: a prediction advances the Flipout seed's state
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert [v.shape for v in loaded.variables] == [v.shape for v in model.variables]
    for saved, restored in zip(model.variables, loaded.variables):  # same order; seed states are named by a counter
        if not saved.path.endswith("seed_generator_state"):  # random streams: the prediction below checks them
            np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)
    keras.utils.set_random_seed(1)
    expected = model.predict_episode(task).numpy()
    keras.utils.set_random_seed(1)
    np.testing.assert_allclose(loaded.predict_episode(task).numpy(), expected, rtol=1e-5, atol=1e-6)
