"""tf.data pipeline: episodes -> meta-batches of ``(inputs, query_labels)`` for ``keras.Model.fit``.

Each element is ``({"support_images", "support_labels", "query_images"}, query_labels)``
with a leading meta-batch axis: images float32 ``[B, N*K, H, W, C]`` in [0, 1]
(Omniglot: C = 1, background 1, ink 0, as decoded; miniImageNet, CIFAR-FS, FC100: C = 3, RGB; a
folder of one's own images: 1 if all are grey, else 3; a TFDS dataset: its images' channels),
labels int32. Sampling runs in parallel
numpy calls keyed by episode index, so the order is deterministic.
"""

from __future__ import annotations

import numpy as np

from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.data.splits import omniglot_split
from tfp_abml.data.tfds_datasets import PREFIX as TFDS_PREFIX
from tfp_abml.data.tfds_datasets import USAGE as TFDS_USAGE
from tfp_abml.data.tfds_datasets import is_tfds_dataset
from tfp_abml.errors import UserInputError

# --dataset: these names, or tfds:NAME[:LABEL_KEY] (any image-classification dataset of TFDS's
# catalogue, tfp_abml.data.tfds_datasets). cifar_fs and fc100 are TFDS's cifar100 in their papers' splits.
DATASETS = ("omniglot", "miniimagenet", "folder", "cifar_fs", "fc100")
TFDS = "tfds"  # the key of every tfds:NAME dataset in the tables below (dataset_kind)
# Per dataset: images per class (the most --shots + --queries can be), image side when neither
# --image-size nor the encoder says otherwise (None: the encoder's default), colour channels.
# A folder of one's own images (tfp_abml.data.folder) and a tfds:NAME dataset have neither
# fixed: their classes are counted and their channels found when they are read.
EXAMPLES_PER_CLASS = {"omniglot": 20, "miniimagenet": 600, "folder": None, "cifar_fs": 600, "fc100": 600,
                      TFDS: None}
DEFAULT_IMAGE_SIZE = {"omniglot": None, "miniimagenet": 84, "folder": None, "cifar_fs": 32, "fc100": 32,
                      TFDS: None}
# The training and validation classes as one split (make_sampler, RunConfig.trainval).
TRAINVAL = "trainval"
CHANNELS = {"omniglot": 1, "miniimagenet": 3, "folder": None, "cifar_fs": 3, "fc100": 3, TFDS: None}


def dataset_kind(dataset):
    """The key of ``dataset`` in the tables above: its name, or ``"tfds"`` for every tfds:NAME."""
    return TFDS if isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX) else dataset


def check_dataset(dataset, flag="--dataset"):
    """``dataset`` is one of DATASETS or a well-formed tfds:NAME[:LABEL_KEY]; else one line naming the fix."""
    if isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX):
        from tfp_abml.data.tfds_datasets import parse

        parse(dataset)
        return
    if dataset not in DATASETS:
        hint = (f" (a TFDS dataset? --dataset {TFDS_PREFIX}{dataset})"
                if isinstance(dataset, str) and dataset.replace("_", "").isalnum() else "")
        raise UserInputError(f"unknown dataset {dataset!r}{hint}: use {flag} {' or '.join(DATASETS)} or {TFDS_USAGE}")


def episode_dataset(sampler: EpisodeSampler, meta_batch=1, start=0, episodes=None):
    """Meta-batches of the sampler's episodes ``start, start + 1, ...`` (``episodes`` of them, or forever)."""
    import tensorflow as tf

    stop = tf.int64.max if episodes is None else start + episodes
    return indexed_episode_dataset(sampler, tf.data.Dataset.range(start, stop), meta_batch)


def indexed_episode_dataset(sampler: EpisodeSampler, indices, meta_batch=1):
    """Meta-batches of the sampler's episodes at ``indices`` (a ``tf.data`` dataset of int64), in order.

    :mod:`tfp_abml.distribute` passes each worker the indices of its own share of every meta-batch.
    """
    import tensorflow as tf

    if meta_batch < 1:
        raise UserInputError(f"--meta-batch must be >= 1, got {meta_batch}")
    n, k, q = sampler.ways, sampler.shots, sampler.queries
    h, w = sampler.image_shape[:2]
    c = sampler.image_shape[2] if len(sampler.image_shape) == 3 else 1

    def sample(index):
        s_img, s_lab, q_img, q_lab = tf.numpy_function(
            sampler.sample, [index], [tf.uint8, tf.int32, tf.uint8, tf.int32], stateful=False)
        to_float = lambda images, count: tf.reshape(tf.cast(images, tf.float32) / 255.0, (count, h, w, c))
        inputs = {"support_images": to_float(s_img, n * k),
                  "support_labels": tf.reshape(s_lab, (n * k,)),
                  "query_images": to_float(q_img, n * q)}
        return inputs, tf.reshape(q_lab, (n * q,))

    dataset = indices.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(meta_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_sampler(dataset="omniglot", split="train", ways=5, shots=1, queries=15, seed=0,
                 data_dir=None, image_size=28, split_scheme="vinyals", class_split=None, channels=None):
    """An EpisodeSampler over one split of a dataset (``split_scheme`` is Omniglot's; miniImageNet has Ravi's).

    ``split="trainval"`` draws from the training and validation classes together: the final run of
    Snell et al. (2017), who retrain on both once validation has chosen the number of episodes.

    ``class_split`` and ``channels`` are those of a folder and of a tfds:NAME dataset
    (``--class-split``; the channels the model takes, None: the images')."""
    check_dataset(dataset)
    if split == TRAINVAL:
        # Each split is checked against the task's shots and queries; its ways, against the union.
        return _union_sampler([make_sampler(dataset, part, 2, shots, queries, seed, data_dir, image_size,
                                            split_scheme, class_split, channels) for part in ("train", "val")],
                              ways, shots, queries, seed)
    if dataset == "folder" or is_tfds_dataset(dataset):
        if dataset == "folder":
            from tfp_abml.data.folder import folder_split

            classes = folder_split(split, data_dir, image_size, class_split, channels)
        else:
            from tfp_abml.data.tfds_datasets import tfds_split

            classes = tfds_split(split, dataset, data_dir, image_size, class_split, channels)
        return EpisodeSampler(classes.images, ways, shots, queries, seed, split_name=classes.where,
                              counts=classes.counts, class_names=classes.names)
    if dataset == "miniimagenet":
        from tfp_abml.data.miniimagenet import miniimagenet_split

        classes, split_scheme = miniimagenet_split(split, data_dir, image_size), "ravi"
    else:
        classes = omniglot_split(split, split_scheme, data_dir, image_size)
    return EpisodeSampler(classes.images, ways, shots, queries, seed,
                          split_name=f"the {dataset} {split_scheme} {split} split")


def _union_sampler(parts, ways, shots, queries, seed):
    """One EpisodeSampler over the classes of several splits' samplers, in order (train, then val)."""
    names = " and ".join(part.split_name for part in parts)
    if all(part.offsets is None for part in parts) and len({part.images.shape[1:] for part in parts}) == 1:
        return EpisodeSampler(np.concatenate([part.images for part in parts]), ways, shots, queries, seed,
                              split_name=names)
    # Ragged, or dense splits with unequal numbers of examples per class: one ragged store.
    images, counts = [], []
    for part in parts:
        if part.offsets is None:
            images.append(part.images.reshape((-1,) + part.images.shape[2:]))
            counts.extend([part.images.shape[1]] * part.images.shape[0])
        else:
            images.append(part.images)
            counts.extend(part.counts)
    class_names = (sum((list(part.class_names) for part in parts), [])
                   if all(part.class_names is not None for part in parts) else None)
    return EpisodeSampler(np.concatenate(images), ways, shots, queries, seed, split_name=names, counts=counts,
                          class_names=class_names)
