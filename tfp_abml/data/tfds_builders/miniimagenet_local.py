"""``miniimagenet_local``: a TFDS builder that prepares miniImageNet from a local image folder.

TFDS has no miniImageNet: its images are ImageNet's, which may not be
redistributed. This builder reads a folder the user made (see
``tfp_abml.data.miniimagenet`` for the layouts it accepts, Ravi & Larochelle's
``images/`` + ``train.csv``/``val.csv``/``test.csv`` first among them) from
``manual_dir`` and writes the three splits, every image 84x84x3 JPEG:

* an image that already is an 84x84 JPEG (Ravi's script writes those) is kept
  byte for byte, so no quality is lost to re-encoding;
* any other size or format (full ImageNet JPEGs, PNGs, greyscale) is decoded to
  RGB, resized to 84x84 (bilinear, antialiased) and encoded as JPEG, quality 95.

Features: ``image``, ``label`` (a ClassLabel of the class names, WordNet ids in
Ravi's lists) and ``filename``. Prepare it from Python
(``tfp_abml.data.miniimagenet.miniimagenet_split(split, data_dir)`` does this
on first use)::

    import tensorflow_datasets as tfds
    from tfp_abml.data.tfds_builders.miniimagenet_local import MiniImageNetLocal
    builder = MiniImageNetLocal()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="path/to/miniimagenet"))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfp_abml.data import miniimagenet_sources
from tfp_abml.data.splits import ClassImages
from tfp_abml.data.tfds_builders import preparation
from tfp_abml.errors import UserInputError

SIZE = miniimagenet_sources.IMAGE_SIZE
JPEG_QUALITY = 95


class MiniImageNetLocal(tfds.core.GeneratorBasedBuilder):
    """miniImageNet, Ravi & Larochelle's split, 84x84x3, from a user-supplied folder in ``manual_dir``."""

    name = "miniimagenet_local"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train/val/test of the Ravi & Larochelle split lists, images at 84x84x3 JPEG."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    miniImageNet's images come from ImageNet (https://image-net.org, free for research after
    registering) and cannot be downloaded automatically. Get Ravi & Larochelle's split lists
    (https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet), make the
    images from ILSVRC-2012's training set with a published script, e.g.
    https://github.com/yaoyao-liu/mini-imagenet-tools
    (`python mini_imagenet_generator.py --imagenet_dir <ILSVRC2012 train folder>`), and lay
    out the manual dir as

        images/<filename>.jpg                 # e.g. images/n0153282900000005.jpg
        train.csv  val.csv  test.csv          # `filename,label` rows (or in splits/ravi/)

    Per-class folders work too: images/<label>/<filename>, <split>/<label>/<filename>, or
    train/<class>/*.jpg, val/<class>/*.jpg, test/<class>/*.jpg without CSVs (what
    mini-imagenet-tools writes into processed_images/).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="miniImageNet (Vinyals et al., 2016) in Ravi & Larochelle's split: 64 train, 16 validation, "
                        "20 test classes of 600 images, 84x84 RGB, read from a local folder.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/twitter/meta-learning-lstm",
            citation="Ravi and Larochelle (2017). Optimization as a model for few-shot learning. ICLR.",
        )

    def _split_generators(self, dl_manager):
        sources = miniimagenet_sources.find_sources(dl_manager.manual_dir)
        self.info.features["label"].names = sorted({label for rows in sources.files.values() for label, _, _ in rows})
        return {split: self._generate_examples(rows) for split, rows in sources.files.items()}

    def _generate_examples(self, rows):
        for (label, filename, _), jpeg in zip(rows, _jpegs_84([path for _, _, path in rows])):
            yield f"{label}/{filename}", {"image": jpeg, "label": label, "filename": filename}


def _to_jpeg_84(path):
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    fits = tf.logical_and(tf.io.is_jpeg(data), tf.reduce_all(tf.equal(tf.shape(image)[:2], [SIZE, SIZE])))

    def resized():
        small = tf.image.resize(tf.cast(image, tf.float32), (SIZE, SIZE), method="bilinear", antialias=True)
        return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8), quality=JPEG_QUALITY)

    return tf.cond(fits, lambda: data, resized)


def _jpegs_84(paths):
    """84x84 JPEG bytes of each image, in order, decoded and resized in parallel."""
    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    dataset = dataset.map(_to_jpeg_84, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        for data in dataset.as_numpy_iterator():
            yield data
    except tf.errors.OpError as err:
        raise _bad_image(paths, err) from err


def _bad_image(paths, err):
    """Name the image that stopped the parallel pipeline, whose error does not say which file it was."""
    for path in paths:
        try:
            _to_jpeg_84(tf.constant(str(path)))
        except tf.errors.OpError as single:
            return UserInputError(f"cannot read the image {path} ({single.message.splitlines()[0]}): "
                                  "replace it with a good copy from your miniImageNet download")
    return UserInputError(f"cannot read the miniImageNet images ({err.message.splitlines()[0]}); check the folder")


def prepare(data_dir):
    """``MiniImageNetLocal`` prepared from the folder under ``data_dir`` (once per distinct folder content)."""
    sources = miniimagenet_sources.find_sources(data_dir)
    source_digest = preparation.digest(sources.digest_entries(), contents=False)
    return preparation.prepared_builder(MiniImageNetLocal, sources.root, source_digest,
                                        f"miniImageNet from {sources.root} ({sources.layout})")


def class_images(builder, split, size):
    """One prepared split as ClassImages, uint8 ``[classes, images, size, size, 3]``.

    Two passes over the records: names first, to give each image its slot,
    then pixels straight into their slots, so a split (813 MB for train at
    84 px) is never held twice.
    """
    label_names = builder.info.features["label"].names
    names = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    names = names.map(lambda x: (x["label"], x["filename"])).batch(8192)
    labels, filenames = [np.concatenate(part) for part in zip(*names.as_numpy_iterator())]
    classes = sorted(set(labels.tolist()), key=lambda label: label_names[label])
    per_class = len(labels) // len(classes)
    if per_class * len(classes) != len(labels):
        raise UserInputError(f"the prepared {split} split in {builder.data_dir} has classes of different sizes; "
                             "delete that folder to prepare it again")
    order = np.lexsort((filenames, [label_names[label] for label in labels]))  # by class name, then file name
    slot = {(int(labels[i]), filenames[i]): position for position, i in enumerate(order)}
    images = np.empty((len(classes), per_class, size, size, 3), np.uint8)
    flat = images.reshape((-1, size, size, 3))

    def scale(example):
        image = example["image"]
        if size != SIZE:
            image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="area")
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return example["label"], example["filename"], image

    pixels = builder.as_dataset(split=split).map(scale, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    for batch_labels, batch_filenames, batch in pixels.as_numpy_iterator():
        flat[[slot[(int(label), name)] for label, name in zip(batch_labels, batch_filenames)]] = batch
    return ClassImages(tuple(label_names[label] for label in classes), images)
