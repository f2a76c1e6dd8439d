"""Image encoders: images ``[M, H, W, C]`` in [0, 1] -> embeddings ``[M, D]``.

* ``conv4`` -- the standard few-shot backbone (Vinyals et al., 2016; Snell et
  al., 2017): 4 x [conv 3x3, 64 filters, batch norm, ReLU, max-pool 2]. At 28x28
  it ends in a 1x1x64 map (28 -> 14 -> 7 -> 3 -> 1), i.e. a 64-d embedding.
* ``efficientnet_b0`` -- ``keras.applications.EfficientNetB0`` (Tan & Le, 2019),
  the paper's encoder, global-average pooled. It wants 3 channels and >= 32
  pixels; grey images are repeated across channels, and [0, 1] is scaled to the
  [0, 255] range its built-in normalisation expects. ``weights=None`` (default)
  trains from scratch; ``"imagenet"`` downloads ImageNet weights; a path loads a
  local weights file.

Both end in a dense projection to ``embedding_dim`` when that differs from the
backbone's own width (conv4 at 28x28: 64, no projection by default). Their batch norm
layers train through TensorFlow's fused kernel (:mod:`tfp_abml.fused_batch_norm`): same
variables and results, about half the time of a Conv-4 training step on CPU.
"""

from __future__ import annotations

from tfp_abml.errors import UserInputError

ENCODERS = ("conv4", "efficientnet_b0")
DEFAULT_IMAGE_SIZE = {"conv4": 28, "efficientnet_b0": 32}
MIN_IMAGE_SIZE = {"conv4": 16, "efficientnet_b0": 32}


def _conv4_backbone(inputs, filters=64):
    import keras

    x = inputs
    for _ in range(4):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    return keras.layers.Flatten()(x)


def _efficientnet_b0_backbone(inputs, weights):
    import keras

    x = inputs
    if inputs.shape[-1] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    x = keras.layers.Rescaling(255.0)(x)
    named = weights in (None, "imagenet")  # else a file, loaded and checked below
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=weights if named else None,
                                                 input_shape=x.shape[1:], pooling="avg")
    if named:
        return backbone(x)
    import warnings

    try:
        # Keras only warns when whole parts of the file do not match ("Skipping ..."): weights left
        # at their random initialisation are a wrong file too.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backbone.load_weights(weights)
        skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
        if skipped:
            raise ValueError(f"{len(skipped)} parts of the network found nothing to load, e.g. {skipped[0]}")
    except (ValueError, OSError, KeyError) as err:  # another network's file, or not HDF5 at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":")
        raise UserInputError(f"--encoder-weights {weights} does not fit EfficientNetB0 without its top "
                             f"(include_top=False): {first[:300]}; use the notop weights file, e.g. "
                             "efficientnetb0_notop.h5, or 'imagenet'") from err
    return backbone(x)


def build_encoder(name="conv4", image_size=None, channels=1, embedding_dim=None, weights=None):
    """A ``keras.Model`` mapping ``[M, S, S, channels]`` images to ``[M, embedding_dim]``."""
    import keras  # here, not at the top: the constants above must import without TensorFlow

    from tfp_abml.fused_batch_norm import fuse_batch_norm

    if name not in ENCODERS:
        raise UserInputError(f"unknown encoder {name!r}: use one of {', '.join(ENCODERS)}")
    image_size = image_size or DEFAULT_IMAGE_SIZE[name]
    if image_size < MIN_IMAGE_SIZE[name]:
        raise UserInputError(f"--image-size {image_size} is too small for {name}: "
                             f"use at least {MIN_IMAGE_SIZE[name]}")
    if weights is not None and name != "efficientnet_b0":
        raise UserInputError("--encoder-weights applies only to --encoder efficientnet_b0")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    if name == "conv4":
        features = _conv4_backbone(inputs)
    else:
        features = _efficientnet_b0_backbone(inputs, weights)
    if embedding_dim and features.shape[-1] != embedding_dim:
        features = keras.layers.Dense(embedding_dim, name="projection")(features)
    return fuse_batch_norm(keras.Model(inputs, features, name=name))
