"""CUDA twin of :mod:`nflow_np.kernels.optim`: Adam on the device, with the same guards as the CPU.

``hyper`` (float64 ``[lr, beta1, beta2, eps, weight_decay, clip_norm, largest]``),
``state`` (int64 ``[steps, rejected]``) and ``status`` live on the device, so a
whole epoch of steps runs without the host looking at a number. The guards are
those of ``fit``'s NumPy path (:class:`nflow_np.train.Adam` under its guard),
decided on the device: a step whose loss or gradient norm is not
finite changes nothing but halves the learning rate; a step that would leave a
parameter beyond ``largest`` (or NaN) updates the moments and the step count but
not the parameters, and halves the learning rate.

A step is four launches: the squared gradient norm (:func:`.reduce.vector_sum`,
float64), clearing the overflow flag, the moments and candidate parameters
(arithmetic in float64, as the Numba twin's), and the commit: parameters copied
where the step is accepted, and one thread doing the bookkeeping.
"""

import math

import numpy as np

from ..optim import ACCEPTED, REJECTED_GRADIENT, REJECTED_OVERFLOW
from .device import blocks, cuda, dummy, family, geometry, jit, launch, launch_rows, scratch_or_default
from .elementwise import fill_cuda
from .reduce import SQUARE, vector_sum
from .scalar import adam_moments, adam_update

__all__ = ["adam_step_cuda", "guarded_adam_step_cuda"]

LOSS, NORM_SQUARED, OVERFLOW = range(3)


@family
def _kernels(ft, geom):

    @jit
    def moments_and_candidates(theta, grad, m, v, candidate, hyper, state, scalars):
        i = cuda.grid(1)
        if i >= theta.size:
            return
        norm = math.sqrt(scalars[NORM_SQUARED])
        if not (math.isfinite(scalars[LOSS]) and math.isfinite(norm)):
            return
        lr = hyper[0]
        b1 = hyper[1]
        b2 = hyper[2]
        clip = hyper[5]
        scale = clip / norm if 0.0 < clip < norm else 1.0
        steps = state[0] + 1
        corr1 = 1.0 - b1 ** steps
        corr2 = 1.0 - b2 ** steps
        g = grad[i] * scale
        m[i], v[i] = adam_moments(g, m[i], v[i], b1, b2)
        # the stored (working-precision) moments enter the update, as on the CPU
        new = adam_update(theta[i], m[i], v[i], lr, hyper[4], lr / corr1, corr2, hyper[3])
        candidate[i] = new
        if not abs(new) <= hyper[6]:
            scalars[OVERFLOW] = 1.0

    @jit
    def commit(theta, candidate, hyper, state, scalars, status, losses, k):
        i = cuda.grid(1)
        loss_ok = math.isfinite(scalars[LOSS])
        grad_ok = math.isfinite(math.sqrt(scalars[NORM_SQUARED]))
        accepted = loss_ok and grad_ok and scalars[OVERFLOW] == 0.0
        if accepted and i < theta.size:
            theta[i] = candidate[i]
        if i == 0:
            # the other threads read none of what thread 0 changes here
            if not (loss_ok and grad_ok):
                state[1] += 1
                hyper[0] *= 0.5
                status[0] = REJECTED_GRADIENT
            elif not accepted:
                state[0] += 1
                state[1] += 1
                hyper[0] *= 0.5
                status[0] = REJECTED_OVERFLOW
            else:
                state[0] += 1
                status[0] = ACCEPTED
            if 0 <= k < losses.size:
                losses[k] = scalars[LOSS] if accepted else math.nan

    return moments_and_candidates, commit


def guarded_adam_step_cuda(theta, grad, m, v, hyper, state, status, scalars, losses=None, k=-1, work=None):
    """One guarded Adam step; ``scalars`` (float64, 3) holds the batch loss in ``scalars[0]`` on entry.

    ``losses[k]`` (float64, on the device) receives the loss, or NaN when the step is rejected.
    """
    work = scratch_or_default(work)
    vector_sum(grad, scalars[NORM_SQUARED:NORM_SQUARED + 1], SQUARE, work=work)
    fill_cuda(scalars[OVERFLOW:OVERFLOW + 1], 0.0)
    kernels = _kernels(theta.dtype)
    candidate = work.get("adam_candidate", theta.size, theta.dtype)
    launch_rows(kernels[0], theta.size, theta, grad, m, v, candidate, hyper, state, scalars)
    threads = geometry().threads     # the commit runs even with no parameters: its first thread keeps the books
    launch(kernels[1], blocks(theta.size, threads), threads)(theta, candidate, hyper, state, scalars, status,
                                                             dummy(np.float64) if losses is None else losses, int(k))


def adam_step_cuda(theta, grad, m, v, hyper, state, status, work=None):
    """The twin of :func:`nflow_np.kernels.optim.adam_step_numba` on device arrays (the norm is not returned): one
    step of :class:`nflow_np.train.Adam` under the NumPy path's guard."""
    work = scratch_or_default(work)
    scalars = work.get("adam_scalars", 3, np.float64)
    fill_cuda(scalars[LOSS:LOSS + 1], 0.0)
    guarded_adam_step_cuda(theta, grad, m, v, hyper, state, status, scalars, work=work)
