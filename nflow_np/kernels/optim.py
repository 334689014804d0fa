"""Adam on a flat parameter vector, guarded like :func:`nflow_np.train.loops.fit`'s NumPy path.

``hyper`` is float64 ``[lr, beta1, beta2, eps, weight_decay, clip_norm, largest]``
(``clip_norm <= 0``: no clipping; ``largest`` the parameters' dtype's largest
finite value, so an update that would overflow on the cast counts as not
finite); ``state`` is int64 ``[steps, rejected]``.
A step whose gradient is not finite is rejected (nothing changes, the
learning rate halves); a step that would leave a parameter non-finite updates
the moments and the step count (as the NumPy path does) but not the
parameters, and halves the learning rate. ``status[0]`` says which
(:data:`ACCEPTED`, :data:`REJECTED_GRADIENT`, :data:`REJECTED_OVERFLOW`).
Returns the gradient's global norm. ``grad`` is spent: a step that computes new
parameters leaves them in it.

The reference is :class:`nflow_np.train.Adam` stepped under the NumPy path's
guard (:func:`nflow_np.train.fit`), which the tests hold the compiled step to;
the status codes, which only the compiled step reports, are tested on their own.
"""

import numpy as np

from .backend import numba_twin
from .scalar import adam_moments, adam_update, average_decay, average_update

# a step's outcome; REJECTED_DIVERGED is the training loops' divergence rule (:func:`.scalar.loss_diverged`), decided
# before the step reaches Adam
ACCEPTED, REJECTED_GRADIENT, REJECTED_OVERFLOW, REJECTED_DIVERGED = 0, 1, 2, 3


@numba_twin
def adam_step_numba(theta, grad, m, v, hyper, state, status):
    p = theta.size
    acc = 0.0
    for i in range(p):
        acc += float(grad[i]) * float(grad[i])
    norm = np.sqrt(acc)
    if not np.isfinite(norm):
        state[1] += 1
        hyper[0] *= 0.5
        status[0] = REJECTED_GRADIENT
        return norm
    lr = hyper[0]
    b1 = hyper[1]
    b2 = hyper[2]
    eps = hyper[3]
    decay = hyper[4]
    clip = hyper[5]
    largest = hyper[6]
    scale = clip / norm if 0.0 < clip < norm else 1.0
    state[0] += 1
    corr1 = 1.0 - b1 ** state[0]
    corr2 = 1.0 - b2 ** state[0]
    step = lr / corr1
    # one pass: moments and new parameters, which wait in the spent gradient's slots until every one is known
    # finite; the count of those that are not is a sum, so that the loop vectorizes
    bad = 0.0
    for i in range(p):
        g = grad[i] * scale
        m[i], v[i] = adam_moments(g, m[i], v[i], b1, b2)
        new = adam_update(theta[i], m[i], v[i], lr, decay, step, corr2, eps)
        grad[i] = new
        bad += 0.0 if abs(new) <= largest else 1.0
    if bad > 0.0:
        state[1] += 1
        hyper[0] *= 0.5
        status[0] = REJECTED_OVERFLOW
        return norm
    for i in range(p):
        theta[i] = grad[i]
    status[0] = ACCEPTED
    return norm


@numba_twin
def average_step_numba(theta, avg, average):
    """The parameters' moving average after an accepted step (:func:`.scalar.average_decay`); ``average`` is float64
    ``[beta, count]``, and the count moves on."""
    decay = average_decay(average[1], average[0])
    for i in range(theta.size):
        avg[i] = average_update(float(avg[i]), float(theta[i]), decay)
    average[1] += 1.0


@numba_twin
def average_restart_numba(theta, avg, average):
    """The moving average started again at ``theta`` (after a step the divergence rule undid)."""
    for i in range(theta.size):
        avg[i] = theta[i]
    average[1] = 0.0
