"""CUDA twin of :mod:`nflow_np.kernels.optim`: Adam on the device, with the same guards as the CPU.

``hyper`` (float64 ``[lr, beta1, beta2, eps, weight_decay, clip_norm, largest]``),
``state`` (int64 ``[steps, rejected]``) and ``status`` live on the device, so a
whole epoch of steps runs without the host looking at a number. The guards are
those of ``fit``'s NumPy path (:class:`nflow_np.train.Adam` under its guard),
decided on the device: a step whose loss or gradient norm is not
finite changes nothing but halves the learning rate; a step that would leave a
parameter beyond ``largest`` (or NaN) updates the moments and the step count but
not the parameters, and halves the learning rate.

The training loops' divergence rule (:func:`nflow_np.kernels.scalar.loss_diverged`)
is decided on the device too, on ``watch`` (float64 ``[level, spread, seen,
verdict]``, kept by the trainer across epochs): a finite loss far above the
level rejects the step, halves the learning rate and puts the whole state vector
``full`` (whose first entries are ``theta``; the running statistics follow) back
to ``prev``, where the last loss that passed was measured; a loss that passes
moves the level and is kept in ``prev`` with the state it was measured at.

A step is four launches: the squared gradient norm (:func:`.reduce.vector_sum`,
float64), one thread clearing the overflow flag and judging the loss, the
moments and candidate parameters (arithmetic in float64, as the Numba twin's),
and the commit: parameters copied where the step is accepted (the kept state
where it diverged), and one thread doing the bookkeeping.
"""

import math

import numpy as np

from ..optim import ACCEPTED, REJECTED_DIVERGED, REJECTED_GRADIENT, REJECTED_OVERFLOW
from .device import blocks, cuda, dummy, family, geometry, jit, launch, launch_rows, scratch_or_default
from .elementwise import fill_cuda
from .reduce import SQUARE, vector_sum
from .scalar import adam_moments, adam_update, average_decay, average_update, loss_diverged, loss_level

__all__ = ["adam_step_cuda", "guarded_adam_step_cuda", "average_step_cuda"]

LOSS, NORM_SQUARED, OVERFLOW = range(3)
VERDICT = 3         # watch[VERDICT]: 1.0 when this step's loss diverged


@family
def _kernels(ft, geom):

    @jit
    def judge(scalars, watch):
        # one thread: the overflow flag cleared, the divergence verdict into watch[VERDICT], the level moved
        if cuda.grid(1) != 0:
            return
        scalars[OVERFLOW] = 0.0
        loss = scalars[LOSS]
        watch[VERDICT] = 0.0
        if math.isfinite(loss):
            if loss_diverged(loss, watch[0], watch[1], watch[2]):
                watch[VERDICT] = 1.0
            else:
                level, spread, seen = loss_level(loss, watch[0], watch[1], watch[2])
                watch[0] = level
                watch[1] = spread
                watch[2] = seen

    @jit
    def moments_and_candidates(theta, grad, m, v, candidate, hyper, state, scalars, watch, full, prev):
        i = cuda.grid(1)
        if i >= full.size:
            return
        if not math.isfinite(scalars[LOSS]) or watch[VERDICT] != 0.0:
            return
        prev[i] = full[i]       # the state this loss was measured at
        if i >= theta.size:
            return
        norm = math.sqrt(scalars[NORM_SQUARED])
        if not math.isfinite(norm):
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
    def commit(theta, candidate, hyper, state, scalars, status, losses, k, watch, full, prev):
        i = cuda.grid(1)
        loss_ok = math.isfinite(scalars[LOSS])
        diverged = loss_ok and watch[VERDICT] != 0.0
        grad_ok = math.isfinite(math.sqrt(scalars[NORM_SQUARED]))
        accepted = loss_ok and not diverged and grad_ok and scalars[OVERFLOW] == 0.0
        if accepted and i < theta.size:
            theta[i] = candidate[i]
        if diverged and i < full.size:
            full[i] = prev[i]
        if i == 0:
            # the other threads read none of what thread 0 changes here
            if diverged:
                state[1] += 1
                hyper[0] *= 0.5
                status[0] = REJECTED_DIVERGED
            elif not (loss_ok and grad_ok):
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
                losses[k] = math.inf if diverged else (scalars[LOSS] if accepted else math.nan)

    return judge, moments_and_candidates, commit


@family
def _average_kernels(ft, geom):

    @jit
    def move(theta, avg, average, status):
        # every thread reads the count; only the bookkeeping launch after this one changes it
        i = cuda.grid(1)
        if i >= theta.size:
            return
        if status[0] == ACCEPTED:
            avg[i] = average_update(float(avg[i]), float(theta[i]), average_decay(average[1], average[0]))
        elif status[0] == REJECTED_DIVERGED:
            avg[i] = theta[i]

    @jit
    def count(average, status):
        if cuda.grid(1) != 0:
            return
        if status[0] == ACCEPTED:
            average[1] += 1.0
        elif status[0] == REJECTED_DIVERGED:
            average[1] = 0.0

    return move, count


def average_step_cuda(theta, avg, average, status):
    """The twin of :func:`nflow_np.kernels.optim.average_step_numba` (after an accepted step, by ``status``) and of
    ``average_restart_numba`` (after a step the divergence rule undid), on device arrays; ``average`` is float64
    ``[beta, count]``."""
    kernels = _average_kernels(theta.dtype)
    launch_rows(kernels[0], theta.size, theta, avg, average, status)
    launch(kernels[1], 1, 1)(average, status)


def guarded_adam_step_cuda(theta, grad, m, v, hyper, state, status, scalars, losses=None, k=-1, work=None,
                           watch=None, full=None, prev=None):
    """One guarded Adam step; ``scalars`` (float64, 3) holds the batch loss in ``scalars[0]`` on entry.

    ``losses[k]`` (float64, on the device) receives the loss, NaN when the step is rejected, +inf when the
    divergence rule rejected it. ``watch`` (float64, 4) is the rule's state, off when not given; ``full`` the
    state vector that starts with ``theta`` (``theta`` itself when not given), ``prev`` its kept copy.
    """
    work = scratch_or_default(work)
    if watch is None:
        watch = work.get("adam_watch", 4, np.float64)
        watch.copy_to_device(np.array([0.0, 0.0, -1.0, 0.0]))      # seen < 0: the rule is off
    full = theta if full is None else full
    prev = work.get("adam_prev", full.size, full.dtype) if prev is None else prev
    vector_sum(grad, scalars[NORM_SQUARED:NORM_SQUARED + 1], SQUARE, work=work)
    kernels = _kernels(theta.dtype)
    launch(kernels[0], 1, 1)(scalars, watch)
    candidate = work.get("adam_candidate", theta.size, theta.dtype)
    launch_rows(kernels[1], full.size, theta, grad, m, v, candidate, hyper, state, scalars, watch, full, prev)
    threads = geometry().threads     # the commit runs even with no parameters: its first thread keeps the books
    launch(kernels[2], blocks(full.size, threads), threads)(theta, candidate, hyper, state, scalars, status,
                                                            dummy(np.float64) if losses is None else losses, int(k),
                                                            watch, full, prev)


def adam_step_cuda(theta, grad, m, v, hyper, state, status, work=None):
    """The twin of :func:`nflow_np.kernels.optim.adam_step_numba` on device arrays (the norm is not returned): one
    step of :class:`nflow_np.train.Adam` under the NumPy path's guard."""
    work = scratch_or_default(work)
    scalars = work.get("adam_scalars", 3, np.float64)
    fill_cuda(scalars[LOSS:LOSS + 1], 0.0)
    guarded_adam_step_cuda(theta, grad, m, v, hyper, state, status, scalars, work=work)
