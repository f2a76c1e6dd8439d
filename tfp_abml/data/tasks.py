"""One few-shot task as a user holds their own images: uint8 pictures and class names, no episode batching.

For examples, tests and the command line: :func:`omniglot_task` draws a task of Omniglot's
Vinyals test split (by default) with Lake's original 105 x 105 pictures, labelled by character
name, the form :class:`tfp_abml.FewShotClassifier` takes.
"""

from __future__ import annotations

import numpy as np

from tfp_abml.data.sampling import EpisodeSampler
from tfp_abml.data.splits import omniglot_split

ORIGINAL_SIZE = 105  # Lake's PNGs


def omniglot_task(data_dir=None, ways=5, shots=1, queries=15, seed=0, split="test", image_size=ORIGINAL_SIZE,
                  split_scheme="vinyals"):
    """``(support_images, support_labels, query_images, query_labels)`` of one Omniglot task.

    Images uint8 ``[count, image_size, image_size, 1]`` (ink 0, background 255, as in the PNGs);
    labels the class names (``"Alphabet/characterNN/rotDDD"`` for the Vinyals split), numpy
    string arrays. The task is the ``seed``'s first episode: the same seed gives the same task.
    ``data_dir`` as for ``training.fit --data-dir`` (None: ``$TFP_ABML_DATA_DIR``, else TFDS).
    """
    classes = omniglot_split(split, split_scheme, data_dir, image_size)
    sampler = EpisodeSampler(classes.images, ways, shots, queries, seed,
                             split_name=f"the omniglot {split_scheme} {split} split")
    (support, support_labels, query, query_labels), picked = sampler.sample_with_classes(0)
    names = np.asarray([classes.names[i] for i in picked])
    return support[..., None], names[support_labels], query[..., None], names[query_labels]
