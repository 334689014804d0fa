"""Finite differences: the independent witness for log-dets and gradients.

Fourth-order central differences, ``(-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h``,
taken along one event coordinate at a time for a whole batch at once (batch
members are independent). Each derivative comes with an estimate of its own
rounding noise, ``~ eps * |f| / h``, so that callers can tell a wrong formula
from an ill-conditioned point.
"""

import numpy as np

_WEIGHTS = ((2, -1.0), (1, 8.0), (-1, -8.0), (-2, 1.0))


def default_step(dtype):
    """A step near the optimum for a fourth-order stencil: eps ** (1/5)."""
    return float(np.finfo(dtype).eps) ** 0.2


def event_coordinates(x, event_ndims):
    """Batch shape and event size of ``x`` viewed as ``batch + event``."""
    batch = x.shape[:x.ndim - event_ndims]
    size = int(np.prod(x.shape[x.ndim - event_ndims:], dtype=np.int64))
    return batch, size


def derivatives_along_events(fn, x, event_ndims, step):
    """Derivatives of ``fn`` along each event coordinate of ``x``.

    ``fn(x)`` returns an array whose leading axes are the batch axes of ``x``.
    ``step`` broadcasts against ``x``. Yields ``(j, derivative, noise)`` for
    each flat event coordinate ``j``; ``derivative`` has ``fn``'s output shape.
    """
    batch, size = event_coordinates(x, event_ndims)
    flat = x.reshape(batch + (size,))
    steps = np.broadcast_to(np.asarray(step, dtype=x.dtype), x.shape).reshape(batch + (size,))
    eps = np.finfo(x.dtype).eps
    for j in range(size):
        base = flat[..., j]
        wanted = steps[..., j]
        for attempt in range(_SHRINKS + 1):
            try:
                coarse, magnitude, h = _stencil(fn, flat, x.shape, j, base, wanted)
                fine, fine_magnitude, h2 = _stencil(fn, flat, x.shape, j, base, wanted / 2)
                break
            except ValueError:
                # a stencil point left the domain: retry closer in
                if attempt == _SHRINKS:
                    raise
                wanted = wanted / 8
        hb = _expand(h, np.ndim(coarse))
        hb2 = _expand(h2, np.ndim(fine))
        d_coarse = coarse / (12.0 * hb)
        d_fine = fine / (12.0 * hb2)
        # Richardson: the stencil's error scales as h^4, so (d_fine - d_coarse) / 15
        # estimates the error left in d_fine. Extrapolating removes most of it; the
        # estimate still joins the rounding noise, as a conservative bound.
        correction = (d_fine - d_coarse) / 15.0
        rounding = eps * fine_magnitude / (12.0 * np.abs(hb2))
        yield j, d_fine + correction, rounding + np.abs(correction)


_SHRINKS = 16


def _stencil(fn, flat, shape, j, base, wanted):
    h = (base + wanted) - base   # the step actually representable at each point
    h = np.where(h == 0, np.spacing(np.abs(base)), h)
    total = 0.0
    magnitude = 0.0
    for mult, weight in _WEIGHTS:
        moved = flat.copy()
        moved[..., j] = base + mult * h
        out = np.asarray(fn(moved.reshape(shape)))
        total = total + weight * out
        magnitude = magnitude + abs(weight) * np.abs(out)
    return total, magnitude, h


def derivative_along_scalar(fn, array, index, step):
    """Derivative of the scalar ``fn()`` with respect to ``array[index]``, perturbed in place and restored.

    Returns the derivative and its noise estimate (rounding plus a Richardson
    estimate of the truncation error), as :func:`derivatives_along_events`.
    """
    original = array[index].copy()
    eps = float(np.finfo(array.dtype).eps)

    def stencil(wanted):
        h = float((original + wanted) - original)
        total = magnitude = 0.0
        for mult, weight in _WEIGHTS:
            array[index] = original + mult * h
            out = float(fn())
            total += weight * out
            magnitude += abs(weight) * abs(out)
        return total / (12.0 * h), eps * magnitude / (12.0 * abs(h))

    try:
        coarse, _ = stencil(step)
        fine, rounding = stencil(step / 2)
    finally:
        array[index] = original
    correction = (fine - coarse) / 15.0
    return fine + correction, rounding + abs(correction)


def _expand(h, ndim):
    return h.reshape(h.shape + (1,) * (ndim - h.ndim)) if ndim > h.ndim else h


def jacobian(fn, x, event_ndims, step):
    """Jacobian of ``fn`` per batch member: shape ``batch + (m, m)``, ``m`` the event size; and its noise."""
    batch, size = event_coordinates(x, event_ndims)
    jac = np.empty(batch + (size, size), dtype=x.dtype)
    noise = np.empty_like(jac)
    for j, d, n in derivatives_along_events(lambda v: fn(v).reshape(batch + (size,)), x, event_ndims, step):
        jac[..., :, j] = d
        noise[..., :, j] = n
    return jac, noise


def input_vjp(value_fn, x, event_ndims, step):
    """Gradient of the per-batch scalar ``value_fn(x)`` (shape ``batch``) with respect to ``x``, and its noise."""
    batch, size = event_coordinates(x, event_ndims)
    grad = np.empty(batch + (size,), dtype=x.dtype)
    noise = np.empty_like(grad)
    for j, d, n in derivatives_along_events(value_fn, x, event_ndims, step):
        grad[..., j] = d
        noise[..., j] = n
    return grad.reshape(x.shape), noise.reshape(x.shape)
