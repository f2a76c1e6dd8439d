"""Property-based fuzzing (hypothesis) of the episode sampler and of the serving request checks.

Derandomized (a fixed sequence of examples, no example database), with few enough examples to
stay within seconds: any valid sampler setting gives label-major episodes with labels 0..N-1,
disjoint support and query sets and the same episode every time; any invalid one is a
UserInputError. Any request the serving function receives either answers a probability row per
query image or fails with an InvalidArgumentError, exactly as the request's validity says.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfp_abml import export
from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.errors import UserInputError

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=120)


def _tagged(classes, examples):
    """Image ``[c, e]`` holds the number ``c * 1000 + e``: every sampled image says where it came from."""
    tags = np.arange(classes)[:, None] * 1000 + np.arange(examples)[None, :]
    return tags.reshape(classes, examples, 1, 1).astype(np.int64)


@st.composite
def sampler_settings(draw):
    """Settings of a sampler and an episode index: a valid set, then (about half the time) one broken."""
    classes, examples = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    ways, shots = draw(st.integers(2, classes)), draw(st.integers(1, examples - 1))
    queries = draw(st.integers(1, examples - shots))
    seed, index = draw(st.integers(0, 2 ** 64)), draw(st.integers(0, 2 ** 64))
    broken = draw(st.sampled_from([None] * 6 + ["ways", "shots", "queries", "seed", "index", "classes"]))
    if broken == "ways":
        ways = draw(st.sampled_from([-1, 0, 1, classes + 1, classes + 7]))
    elif broken == "shots":
        shots = draw(st.sampled_from([-1, 0, examples - queries + 1]))
    elif broken == "queries":
        queries = draw(st.sampled_from([-1, 0, examples - shots + 1]))
    elif broken == "seed":
        seed = draw(st.integers(-2 ** 31, -1))
    elif broken == "index":
        index = draw(st.integers(-2 ** 31, -1))
    elif broken == "classes":
        classes = draw(st.integers(0, ways - 1))
    return classes, examples, ways, shots, queries, seed, index, broken


@FUZZ
@given(sampler_settings())
def test_sampler_gives_label_major_disjoint_deterministic_episodes(case):
    classes, examples, ways, shots, queries, seed, index, broken = case
    if broken not in (None, "index"):
        with pytest.raises(UserInputError):
            EpisodeSampler(_tagged(classes, examples), ways, shots, queries, seed)
        return
    sampler = EpisodeSampler(_tagged(classes, examples), ways, shots, queries, seed)
    if broken == "index":
        with pytest.raises(UserInputError, match="episode index must be an integer >= 0"):
            sampler.sample(index)
        return
    s_img, s_lab, q_img, q_lab = sampler.sample(index)
    np.testing.assert_array_equal(s_lab, np.repeat(np.arange(ways), shots))
    np.testing.assert_array_equal(q_lab, np.repeat(np.arange(ways), queries))
    s_tags, q_tags = s_img[:, 0, 0], q_img[:, 0, 0]
    assert len(set(s_tags) | set(q_tags)) == len(s_tags) + len(q_tags)  # disjoint, no image twice
    class_of_label = {}
    for tag, label in zip(np.concatenate([s_tags, q_tags]), np.concatenate([s_lab, q_lab])):
        assert class_of_label.setdefault(label, tag // 1000) == tag // 1000  # one class per label
    assert len(set(class_of_label.values())) == ways  # a different class for every label
    again = EpisodeSampler(_tagged(classes, examples), ways, shots, queries, seed).sample(index)
    for first, second in zip((s_img, s_lab, q_img, q_lab), again):
        np.testing.assert_array_equal(first, second)


NOT_A_COUNT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not x.is_integer()),
                        st.text(max_size=3), st.none(), st.booleans())


@FUZZ
@given(which=st.sampled_from(["ways", "shots", "queries", "seed"]), value=NOT_A_COUNT)
def test_sampler_refuses_anything_but_whole_numbers(which, value):
    settings_ = dict(ways=3, shots=1, queries=1, seed=0)
    settings_[which] = value
    with pytest.raises(UserInputError, match="must be an integer"):
        EpisodeSampler(_tagged(5, 5), **settings_)


# -- serving ------------------------------------------------------------------------------------

WAYS, IMAGE_SIZE, MAX_IMAGES, MAX_VALUES = 3, 16, 10, 6000


@pytest.fixture(scope="module")
def serve():
    """The serving function of a tiny untrained 3-way ProtoNet, with small request limits to reach them."""
    from tfp_abml.run_config import RunConfig

    config = RunConfig(method="protonet", ways=WAYS, image_size=IMAGE_SIZE)
    model = config.build_model()
    model(config.example_inputs())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "MAX_REQUEST_IMAGES", MAX_IMAGES)
        patch.setattr(export, "MAX_REQUEST_VALUES", MAX_VALUES)
        function = tf.function(export.serving_function(model, IMAGE_SIZE), input_signature=export.INPUT_SIGNATURE)
        function.get_concrete_function()  # traced now, with the small limits
    return function


FAULTS = ["empty support", "empty query", "height 0", "2 channels", "query channels differ", "label out of range",
          "label missing", "one label short", "one label too many", "support 3-D", "query 5-D", "labels 2-D",
          "NaN pixel", "infinite pixel", "0..255 pixels", "negative pixel", "too many images", "too many values"]


@st.composite
def requests(draw):
    """A request and whether it is valid: a valid task, then (about half the time) one fault."""
    shots, query = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    channels = draw(st.sampled_from([1, 3]))
    labels = np.asarray(draw(st.permutations(np.repeat(np.arange(WAYS), shots).tolist())), np.int32)
    fault = draw(st.sampled_from([None] * len(FAULTS) + FAULTS))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    support = len(labels)
    if fault == "too many images":
        query = MAX_IMAGES - support + 1
    if fault == "too many values":
        height = width = 40  # at least 4 images of 1600 values
    query_channels = channels
    if fault == "2 channels":
        channels = query_channels = 2
    if fault == "query channels differ":
        query_channels = 4 - channels
    s = rng.uniform(size=(support, 0 if fault == "height 0" else height, width, channels)).astype(np.float32)
    q = rng.uniform(size=(query, height, width, query_channels)).astype(np.float32)
    if fault == "empty support":
        s, labels = s[:0], labels[:0]
    if fault == "empty query":
        q = q[:0]
    if fault == "label out of range":
        labels[draw(st.integers(0, support - 1))] = draw(st.sampled_from([-1, WAYS, 1000]))
    if fault == "label missing":
        missing = draw(st.integers(0, WAYS - 1))
        labels[labels == missing] = (missing + 1) % WAYS
    if fault == "one label short":
        labels = labels[:-1]
    if fault == "one label too many":
        labels = np.append(labels, 0).astype(np.int32)
    pixel = {"NaN pixel": np.nan, "infinite pixel": np.inf, "0..255 pixels": 255.0, "negative pixel": -0.5}
    if fault in pixel:
        target = q if draw(st.booleans()) else s
        target.flat[draw(st.integers(0, target.size - 1))] = pixel[fault]
    if fault == "support 3-D":
        s = s[..., 0]
    if fault == "query 5-D":
        q = q[None]
    if fault == "labels 2-D":
        labels = labels[None]
    valid = fault is None and support + query <= MAX_IMAGES and s.size + q.size <= MAX_VALUES
    return (s, labels, q), valid


@settings(FUZZ, max_examples=80)
@given(request=requests())
def test_serving_answers_valid_requests_and_refuses_the_rest(serve, request):
    (support_images, support_labels, query_images), valid = request
    if not valid:
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(support_images, support_labels, query_images)
        return
    probabilities = serve(support_images, support_labels, query_images)["probabilities"].numpy()
    assert probabilities.shape == (query_images.shape[0], WAYS)
    assert np.all(np.isfinite(probabilities)) and np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)
