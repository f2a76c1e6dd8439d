"""The inner loop's gradients against a case solved by hand."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_abml.inner_loop import sgd_adapt

pytestmark = pytest.mark.numerics  # compares computations: also run under other kernels (.ci/run)


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_gradient_matches_the_analytic_case(steps):
    # Inner loss 0.5 * a * w^2: each step multiplies w by (1 - lr a), so w_K = (1 - lr a)^K w_0.
    # Outer loss 0.5 * w_K^2 has dL/dw_0 = w_K (1 - lr a)^K (second order) and w_K (first order).
    a, lr, w0 = 3.0, 0.1, tf.Variable(2.0)
    with tf.GradientTape(persistent=True) as tape:
        (w_k,) = sgd_adapt([tf.identity(w0)], lambda p: 0.5 * a * p[0] ** 2, steps, lr)
        (w_k_first,) = sgd_adapt([tf.identity(w0)], lambda p: 0.5 * a * p[0] ** 2, steps, lr, first_order=True)
        outer, outer_first = 0.5 * w_k ** 2, 0.5 * w_k_first ** 2
    shrink = (1 - lr * a) ** steps
    np.testing.assert_allclose(float(w_k), 2.0 * shrink, rtol=1e-6)
    np.testing.assert_allclose(float(tape.gradient(outer, w0)), 2.0 * shrink * shrink, rtol=1e-5)
    np.testing.assert_allclose(float(tape.gradient(outer_first, w0)), 2.0 * shrink, rtol=1e-5)


def test_second_order_term_through_a_hessian_that_depends_on_the_meta_parameter():
    # Inner loss 0.5 * theta * w^2 with theta a meta-parameter that never enters the outer loss
    # directly: its gradient exists only through the inner gradient, so first order gives zero.
    theta, lr, w0 = tf.Variable(2.0), 0.1, tf.constant(1.5)
    with tf.GradientTape(persistent=True) as tape:
        (w1,) = sgd_adapt([w0], lambda p: 0.5 * theta * p[0] ** 2, 1, lr)
        (w1_first,) = sgd_adapt([w0], lambda p: 0.5 * theta * p[0] ** 2, 1, lr, first_order=True)
        outer, outer_first = 0.5 * w1 ** 2, 0.5 * w1_first ** 2
    # w1 = w0 (1 - lr theta)  =>  dL/dtheta = w1 * (-lr w0)
    expected = float(w0) * (1 - lr * 2.0) * (-lr * float(w0))
    np.testing.assert_allclose(float(tape.gradient(outer, theta)), expected, rtol=1e-5)
    assert abs(expected) > 0.1
    grad_first = tape.gradient(outer_first, theta)
    assert grad_first is None or float(grad_first) == 0.0


def test_zero_steps_returns_the_initial_parameters():
    params = [tf.constant([1.0, 2.0])]
    assert sgd_adapt(params, lambda p: tf.reduce_sum(p[0] ** 2), 0, 1.0)[0] is params[0]
