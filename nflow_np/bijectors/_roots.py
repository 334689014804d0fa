"""A safeguarded scalar root finder, vectorized over a batch: the sampling direction of monotone maps with no
closed-form inverse (the deep sigmoidal transform, block neural autoregressive layers).

:func:`bracketed_newton` solves ``f(t) = target`` elementwise for an increasing ``f`` given a
bracket ``[lo, hi]`` holding each root. Each step takes Newton's step from the current
point when it lands strictly inside the bracket, else the bracket's midpoint, and then
shrinks the bracket on the side the residual's sign says. An element stops when a
Newton step moves it by at most ``tol |t|``, when its residual is exactly zero, when no
float is left inside its bracket, or after ``max_iter`` steps. The compiled twin of the
deep sigmoidal transform (:mod:`nflow_np.kernels.transforms.sigmoidal`) runs the same
iteration one element at a time.
"""

import numpy as np

__all__ = ["bracketed_newton", "MAX_ITER", "step_tolerance"]

#: steps at most
MAX_ITER = 100


def step_tolerance(dtype):
    """The relative step at which the iteration stops: 8 ulps of ``dtype``."""
    return 8.0 * float(np.finfo(dtype).eps)


def bracketed_newton(fn, target, lo, hi, start, *, max_iter=MAX_ITER):
    """Roots of an increasing ``fn`` with ``fn(t) = target``, elementwise.

    Parameters
    ----------
    fn : callable
        ``fn(t, active) -> (value, slope)``: the map and its (positive) derivative at ``t``
        for the elements where ``active`` is True (the others' values are ignored).
    target, lo, hi, start : ndarray
        Same shape; ``lo <= root <= hi`` and ``start`` inside the bracket. Elements with
        ``lo == hi`` are returned as ``lo``.

    Returns
    -------
    ndarray
        The roots, to a few ulps of the dtype where ``fn`` allows it.
    """
    tol = step_tolerance(target.dtype)
    t = np.clip(start, lo, hi)
    active = lo < hi
    t = np.where(active, t, lo)
    for _ in range(max_iter):
        if not active.any():
            break
        value, slope = fn(t, active)
        diff = value - target
        hi = np.where(active & (diff > 0), t, hi)
        lo = np.where(active & (diff < 0), t, lo)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            step = t - diff / slope
        inside = (step > lo) & (step < hi)
        mid = lo + (hi - lo) / 2
        mid_inside = (mid > lo) & (mid < hi)
        moves = active & (diff != 0) & (inside | mid_inside)
        done = active & ((diff == 0) | ~(inside | mid_inside) | (inside & (np.abs(step - t) <= tol * np.abs(step))))
        t = np.where(moves, np.where(inside, step, mid), t)
        active = active & ~done
    return t
