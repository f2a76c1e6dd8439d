"""Episodic data: reader (omniglot) -> class splits (splits) -> task sampling (sampling) -> tf.data (pipeline)."""

from tfp_abml.data.pipeline import DATASETS, episode_dataset, make_sampler
from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.data.splits import ClassImages, omniglot_split

__all__ = ["DATASETS", "ClassImages", "EpisodeSampler", "episode_dataset", "make_sampler", "omniglot_split"]
