"""Episodic data: readers -> class splits -> task sampling (sampling) -> tf.data (pipeline).

Omniglot: ``omniglot`` (reader) -> ``splits`` (Vinyals or Lake classes); miniImageNet:
``miniimagenet`` (Ravi & Larochelle's classes). Both read their images through TFDS
(``tfds_builders``: local builders for files on disk, TFDS's own ``omniglot`` online). A user's
own image folders: ``folder`` (split folders, or class folders divided by ``--class-split``).
CIFAR-FS, FC100 and any TFDS image-classification dataset: ``tfds_datasets`` (TFDS's prepared
data, the published splits in ``split_lists/``, or a seeded ``--class-split``).
"""

from tfp_abml.data.pipeline import DATASETS, episode_dataset, make_sampler
from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.data.splits import ClassImages, omniglot_split
from tfp_abml.data.tasks import omniglot_task

__all__ = ["DATASETS", "ClassImages", "EpisodeSampler", "episode_dataset", "make_sampler", "omniglot_split",
           "omniglot_task"]
