"""Episode sampling: N-way, K-shot, Q-query tasks from a split's class images.

Episode ``i`` is a pure function of ``(seed, i)``: the same seed gives the same
tasks in any order, in parallel, and after a resume that restarts at episode
``i``. Within a task the N classes are drawn without replacement, and so are
the K + Q examples of each class; labels 0..N-1 go to the classes in a random
order, so a label carries no information across tasks.

Classes of unequal size (a user's own folders, :mod:`tfp_abml.data.folder`) are held ragged:
the images of every class one after the other, ``images[total, H, W(, C)]``, with ``counts``
saying how many each class has; a task then draws its examples from all of a class's images.
"""

from __future__ import annotations

import numpy as np

from tfp_abml.errors import UserInputError


class EpisodeSampler:
    """Draws tasks from uint8 ``images[classes, examples, H, W]`` (grey) or ``[..., H, W, C]`` (colour).

    ``sample(i)`` returns ``(support_images, support_labels, query_images,
    query_labels)``: images uint8 ``[N*K, H, W(, C)]`` and ``[N*Q, H, W(, C)]``, labels
    int32. Support and query are ordered by label (label-major).

    With ``counts`` (images per class) the store is ragged: ``images[total, H, W(, C)]``, class
    ``c`` the ``counts[c]`` images after those of classes ``0..c-1``; ``class_names`` then name
    the class that is too small for ``shots + queries``.
    """

    def __init__(self, images, ways, shots, queries, seed=0, split_name="this split", counts=None,
                 class_names=None):
        images = np.asarray(images)
        self.offsets = None
        if counts is None:
            if images.ndim not in (4, 5):
                raise UserInputError(f"class images must be [classes, examples, H, W] or [classes, examples, H, W, C], "
                                     f"got shape {images.shape}")
            classes, examples = images.shape[:2]
        else:
            counts = np.asarray(counts, np.int64)
            if images.ndim not in (3, 4) or counts.ndim != 1 or counts.sum() != len(images) or (counts < 0).any():
                raise UserInputError(f"ragged class images must be [images, H, W] or [images, H, W, C] with counts "
                                     f"per class summing to the images, got shape {images.shape} and "
                                     f"{counts.sum()} counted")
            classes, examples = len(counts), int(counts.min()) if len(counts) else 0
            self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.counts = counts
        ways, shots, queries = (_whole(flag, value, least) for flag, value, least in
                                (("--ways", ways, 2), ("--shots", shots, 1), ("--queries", queries, 1)))
        seed = _whole("--seed", seed, 0)  # numpy's seed sequences take no negative numbers
        if ways > classes:
            raise UserInputError(f"--ways {ways} is larger than the {classes} classes of {split_name}: "
                                 f"use --ways {classes} or fewer")
        if shots + queries > examples and counts is not None:
            smallest = int(np.argmin(counts))
            name = class_names[smallest] if class_names is not None else f"number {smallest}"
            raise UserInputError(f"class {name} of {split_name} has {examples} images, fewer than --shots {shots} + "
                                 f"--queries {queries} = {shots + queries}: add images to it, remove it, or lower "
                                 "--shots or --queries")
        if shots + queries > examples:
            raise UserInputError(f"--shots {shots} + --queries {queries} = {shots + queries} is more than the "
                                 f"{examples} examples per class of {split_name}: lower --shots or --queries")
        self.images, self.ways, self.shots, self.queries = images, int(ways), int(shots), int(queries)
        self.split_name, self.class_names = split_name, class_names
        self.seed = int(seed)

    @property
    def image_shape(self):
        """``(H, W)`` of grey images, ``(H, W, C)`` of colour ones."""
        return self.images.shape[1:] if self.offsets is not None else self.images.shape[2:]

    def sample(self, index):
        return self.sample_with_classes(index)[0]

    def sample_with_classes(self, index):
        """``(sample(index), classes)``: the episode and the split's class index of each label 0..N-1."""
        rng = np.random.default_rng([self.seed, _whole("episode index", index, 0)])
        if self.offsets is None:
            classes = rng.choice(self.images.shape[0], self.ways, replace=False)
            # Row n of `picks` holds the examples of the class that gets label n.
            picks = np.stack([rng.choice(self.images.shape[1], self.shots + self.queries, replace=False)
                              for _ in classes])
            episode = self.images[classes[:, None], picks]  # [N, K+Q, H, W]
        else:  # the same draws, from each class's own number of images
            classes = rng.choice(len(self.counts), self.ways, replace=False)
            picks = np.stack([rng.choice(int(self.counts[c]), self.shots + self.queries, replace=False)
                              for c in classes])
            episode = self.images[self.offsets[classes][:, None] + picks]
        labels = np.repeat(np.arange(self.ways, dtype=np.int32), self.shots + self.queries).reshape(self.ways, -1)
        k = self.shots
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        return (flat(episode[:, :k]), flat(labels[:, :k]), flat(episode[:, k:]), flat(labels[:, k:])), classes


def _whole(name, value, least):
    """``value`` as an int >= ``least``; UserInputError for anything else (floats with a fraction, NaN, text)."""
    if isinstance(value, np.ndarray) and value.shape == ():  # what tf.numpy_function passes
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserInputError(f"{name} must be an integer >= {least}, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise UserInputError(f"{name} must be an integer >= {least}, got {value!r}")
    if value < least:
        raise UserInputError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)
