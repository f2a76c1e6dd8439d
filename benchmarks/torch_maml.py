"""A PyTorch peer for the speed benchmark: second-order MAML on Conv-4 with the `higher` library.

Written for ``benchmarks/speed.py`` after higher's documented usage (its README and MAML
example): an inner ``torch.optim.SGD`` whose steps ``higher.innerloop_ctx`` makes
differentiable, ``copy_initial_weights=False`` so that the outer gradient reaches the
network's own parameters, one context per task, the query loss of each task backpropagated
inside its context, one outer ``Adam`` step per meta-batch.

Everything is set to match ``tfp_abml.baselines.MAML`` as built by ``RunConfig(method="maml")``:
Conv-4 (4 x [conv 3x3 64 without bias, batch norm, ReLU, max-pool 2]) and a dense N-way
output, batch norm in training mode with Keras's epsilon (1e-3) and momentum (0.99, i.e.
PyTorch's 0.01), all weights adapted by plain SGD, the outer loss the mean over tasks of the
mean query cross-entropy, and tasks from the same episode sampler. Needs the optional
``bench`` extra (``pip install -e ".[bench]"``): torch and higher are never runtime
dependencies of tfp_abml.
"""

from __future__ import annotations

import numpy as np


def conv4_maml_network(ways, channels=1, image_size=28, filters=64):
    """PyTorch Conv-4 with an N-way linear output, the shape of ``RunConfig(method="maml")``'s network."""
    from torch import nn

    layers, depth, size = [], channels, image_size
    for _ in range(4):
        layers += [nn.Conv2d(depth, filters, 3, padding=1, bias=False),
                   nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01),
                   nn.ReLU(), nn.MaxPool2d(2)]
        depth, size = filters, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters * size * size, ways))


class HigherMAML:
    """Second-order MAML trained with `higher`: ``step(batch)`` is one outer update of a meta-batch."""

    def __init__(self, ways, inner_steps=5, inner_lr=0.5, outer_lr=1e-3, first_order=False, image_size=28, seed=0):
        import torch

        torch.manual_seed(seed)
        self.network = conv4_maml_network(ways, image_size=image_size)
        self.network.train()  # batch statistics in adaptation and prediction alike, as in tfp_abml's MAML
        self.inner_steps, self.inner_lr, self.first_order = int(inner_steps), float(inner_lr), bool(first_order)
        self.meta_optimizer = torch.optim.Adam(self.network.parameters(), lr=outer_lr)

    def step(self, batch):
        """One outer update; ``batch`` is ``(support_images, support_labels, query_images, query_labels)``
        as torch tensors with a leading task axis (images ``[T, M, C, H, W]``). Returns the mean query loss."""
        import higher
        import torch.nn.functional as F
        import torch

        support_images, support_labels, query_images, query_labels = batch
        tasks = support_images.shape[0]
        inner_optimizer = torch.optim.SGD(self.network.parameters(), lr=self.inner_lr)
        self.meta_optimizer.zero_grad()
        total = 0.0
        for task in range(tasks):
            with higher.innerloop_ctx(self.network, inner_optimizer, copy_initial_weights=False,
                                      track_higher_grads=not self.first_order) as (model, optimizer):
                for _ in range(self.inner_steps):
                    optimizer.step(F.cross_entropy(model(support_images[task]), support_labels[task]))
                query_loss = F.cross_entropy(model(query_images[task]), query_labels[task]) / tasks
                query_loss.backward()
                total += float(query_loss.detach())
        self.meta_optimizer.step()
        return total


def torch_batch(sampler, first_episode, tasks):
    """Episodes ``first_episode ..`` of an ``EpisodeSampler`` as a torch meta-batch in [0, 1], NCHW."""
    import torch

    episodes = [sampler.sample(first_episode + t) for t in range(tasks)]

    def images(index):
        stacked = np.stack([e[index] for e in episodes]).astype(np.float32) / 255.0  # [T, M, H, W(, C)]
        if stacked.ndim == 4:
            stacked = stacked[..., None]
        return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 1, 4, 2, 3)))

    def labels(index):
        return torch.from_numpy(np.stack([e[index] for e in episodes]).astype(np.int64))

    return images(0), labels(1), images(2), labels(3)
