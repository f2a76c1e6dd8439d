"""Shared fixtures: real Omniglot from ../shared/data (or $TFP_ABML_DATA_DIR), seeded TensorFlow."""

import contextlib
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]


def omniglot_data_dir():
    """The data directory the tests read: $TFP_ABML_DATA_DIR, else ../shared/data beside the repo."""
    configured = os.environ.get("TFP_ABML_DATA_DIR")
    path = (pathlib.Path(configured) if configured else REPO.parent / "shared" / "data").resolve()
    if not (path / "omniglot" / "images_background.zip").is_file():
        pytest.fail(f"Omniglot archives not found under {path}: set TFP_ABML_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def data_dir():
    return omniglot_data_dir()


@pytest.fixture(scope="session", autouse=True)
def _tfds_dir(tmp_path_factory):
    """Datasets prepared through TFDS go to a folder of this session (subprocesses inherit it), never to
    ~/tensorflow_datasets; set TFP_ABML_TFDS_DIR yourself to keep prepared copies between sessions."""
    if not os.environ.get("TFP_ABML_TFDS_DIR"):
        os.environ["TFP_ABML_TFDS_DIR"] = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    return pathlib.Path(os.environ["TFP_ABML_TFDS_DIR"])


@pytest.fixture(autouse=True)
def _seeded():
    import keras

    keras.utils.set_random_seed(1234)


@contextlib.contextmanager
def float64_models():
    """Keras builds float64 models inside; float32 again after (the float type and the cached global policy).

    Tests that compare two computations of one function run in float64 where the model allows
    it: Omniglot-like inputs (near-constant images, batch norm over a handful of them) amplify
    float32 round-off by ~1e5, so a float32 tolerance that holds on one CPU's kernels fails on
    another's (issue 17). In float64 the same amplification leaves ~1e-11, far below any bug.
    """
    import keras

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
