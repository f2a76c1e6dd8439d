"""The inner loop: K steps of plain SGD on the support loss, differentiable for the outer update.

    phi_0 = posterior parameters from the LSTM
    phi_{k+1} = phi_k - lr * grad_phi L_support(phi_k),    k = 0..K-1

With ``first_order=False`` (default) the outer tape sees the inner gradients as
functions of ``phi_0``, so the outer gradient carries the second-order term
``(I - lr * H_support) ...`` exactly as in MAML (Finn et al., 2017). With
``first_order=True`` the inner gradients are treated as constants (FOMAML):
cheaper, and the outer gradient reaches ``phi_0`` only through the identity path.
Paper settings: K=1 at lr 1.0, or K=5 at lr 0.5.
"""

from __future__ import annotations

import tensorflow as tf


def sgd_adapt(params, loss_fn, steps, learning_rate, first_order=False):
    """Return ``params`` after ``steps`` SGD steps on ``loss_fn(params)``.

    Args:
      params: list of tensors (not variables) to adapt.
      loss_fn: callable, list of tensors -> scalar loss. For a meta-batch it must
        be the *sum* of per-task losses, so that each task's parameters get the
        gradient of their own task's loss.
      steps: K, a Python int (the loop is unrolled: K is small).
      learning_rate: inner SGD step size: one number, or one tensor per parameter
        (broadcastable to it), as Meta-SGD learns them.
      first_order: stop gradients through the inner gradients.
    """
    rates = learning_rate if isinstance(learning_rate, (list, tuple)) else [learning_rate] * len(params)
    for _ in range(int(steps)):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = loss_fn(params)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        params = [p - rate * g for p, rate, g in zip(params, rates, grads)]
    return params
