"""Finite differences: the independent witness for log-dets and gradients.

Fourth-order central differences, ``(-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h``,
taken along one event coordinate at a time for a whole batch at once (batch
members are independent). Each derivative comes with an estimate of its own
rounding noise, ``~ eps * |f| / h``, so that callers can tell a wrong formula
from an ill-conditioned point.

Kinks. A central stencil that straddles a point where the function is not
smooth (a ReLU unit's kink, ``|x|`` at 0) averages two slopes into a number
that is neither, and its own error estimate can miss that. Given a
:class:`Kinks` policy, every derivative is also estimated one-sidedly from the
points at hand (third order, from ``x`` and the stencil's points on each
side). Where either side disagrees with the central value, each side is
estimated again to fourth order at two steps: a side is clean when its two
steps agree. Two clean sides that agree mean a smooth point after all (their
mean is used); one clean side means a kink on the other (the clean side is
used: a one-sided derivative, counted as checked); no clean side (kinks on
both sides) or two that disagree (a kink at the point itself) sends the
derivative to a stencil ``_SHRINK`` times smaller, up to ``_RETRIES`` times,
and what is still open then (unless its two sides agree within their
errors) is unresolved: the caller skips it, and the
policy counts it.
"""

import numpy as np

_WEIGHTS = ((2, -1.0), (1, 8.0), (-1, -8.0), (-2, 1.0))
# third-order one-sided derivative at 0 from nodes 0, h/2, h, 2h (the central stencils' points on one side);
# error h^3 f''''/24
_SCREEN = ((0.0, -3.5), (0.5, 16.0 / 3.0), (1.0, -2.0), (2.0, 1.0 / 6.0))
# fourth-order one-sided derivative at 0 from nodes 0, k, 2k, 3k, 4k: (-25, 48, -36, 16, -3) / 12k
_ONE_SIDED = ((0, -25.0), (1, 48.0), (2, -36.0), (3, 16.0), (4, -3.0))
# how far apart two estimates may be, in units of their summed noise, and still count as agreeing
_AGREE = 16.0
# where a kink leaves no clean side, retry this many times, with the stencil this many times smaller each time
_RETRIES = 2
_SHRINK = 16.0


class Kinks:
    """How derivatives treat points where the function is not smooth, and a count of them.

    ``rtol`` and ``atol`` set the disagreement below which a central
    difference is trusted without one-sided estimates: a quarter of
    ``atol + rtol * |derivative|``, the caller's own tolerance.
    """

    def __init__(self, rtol, atol):
        self.rtol = rtol
        self.atol = atol
        self.checked = 0      # derivatives across a kink, taken from its clean side or with a smaller stencil
        self.skipped = 0      # derivatives left unresolved

    def _slack(self, central):
        return 0.25 * (self.atol + self.rtol * np.abs(central))


def default_step(dtype):
    """A step near the optimum for a fourth-order stencil: eps ** (1/5)."""
    return float(np.finfo(dtype).eps) ** 0.2


def event_coordinates(x, event_ndims):
    """Batch shape and event size of ``x`` viewed as ``batch + event``."""
    batch = x.shape[:x.ndim - event_ndims]
    size = int(np.prod(x.shape[x.ndim - event_ndims:], dtype=np.int64))
    return batch, size


def derivatives_along_events(fn, x, event_ndims, step, kinks=None):
    """Derivatives of ``fn`` along each event coordinate of ``x``.

    ``fn(x)`` returns an array whose leading axes are the batch axes of ``x``.
    ``step`` broadcasts against ``x``. Yields ``(j, derivative, noise, unresolved)``
    for each flat event coordinate ``j``; ``derivative`` has ``fn``'s output
    shape, and so has the mask ``unresolved`` (all False without ``kinks``).
    """
    batch, size = event_coordinates(x, event_ndims)
    flat = x.reshape(batch + (size,))
    steps = np.broadcast_to(np.asarray(step, dtype=x.dtype), x.shape).reshape(batch + (size,))
    eps = np.finfo(x.dtype).eps
    at = None if kinks is None else np.asarray(fn(x))
    for j in range(size):
        base = flat[..., j]
        wanted = steps[..., j]
        for attempt in range(_SHRINKS + 1):
            try:
                coarse, magnitude, h, outer = _stencil(fn, flat, x.shape, j, base, wanted)
                fine, fine_magnitude, h2, inner = _stencil(fn, flat, x.shape, j, base, wanted / 2)
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
        value, noise = d_fine + correction, rounding + np.abs(correction)
        if kinks is None:
            yield j, value, noise, np.zeros(np.shape(value), dtype=bool)
            continue
        near = {0.0: at, 0.5: inner[1], -0.5: inner[-1], 1.0: outer[1], -1.0: outer[-1],
                2.0: outer[2], -2.0: outer[-2]}

        def evaluate(mult, j=j, base=base, h=h):
            moved = flat.copy()
            moved[..., j] = base + mult * h
            return np.asarray(fn(moved.reshape(x.shape)))

        scale = _expand(np.abs(base), np.ndim(value))
        value, noise, unresolved = _review(kinks, evaluate, near, value, noise, rounding, hb, scale, eps)
        yield j, value, noise, unresolved


_SHRINKS = 16


def _stencil(fn, flat, shape, j, base, wanted):
    h = (base + wanted) - base   # the step actually representable at each point
    h = np.where(h == 0, np.spacing(np.abs(base)), h)
    total = 0.0
    magnitude = 0.0
    values = {}
    for mult, weight in _WEIGHTS:
        moved = flat.copy()
        moved[..., j] = base + mult * h
        out = np.asarray(fn(moved.reshape(shape)))
        values[mult] = out
        total = total + weight * out
        magnitude = magnitude + abs(weight) * np.abs(out)
    return total, magnitude, h, values


def _review(kinks, evaluate, near, central, noise, rounding, h, scale, eps):
    """The derivative where ``central`` may straddle a kink: ``(value, noise, unresolved)``; see the module.

    ``near`` maps multiples of ``h`` to the function's values there (0, +-h/2, +-h, +-2h);
    ``evaluate(mult)`` computes it elsewhere. ``scale`` is ``|x|`` at the point: the nodes
    ``x + mult * h`` are rounded to within ``eps * |x|``, which moves each value by about
    ``eps * |x| * |f'|``. ``noise`` is the central difference's estimated error, ``rounding`` the part of it
    that rounding accounts for: the rest (the Richardson correction) is what a kink would inflate.
    """
    value, noise, checked, unresolved = _sides(kinks, evaluate, near, central, noise, rounding, h, scale, eps,
                                               _RETRIES)
    kinks.checked += int(np.count_nonzero(checked))
    kinks.skipped += int(np.count_nonzero(unresolved))
    return value, noise, unresolved


def _sides(kinks, evaluate, near, central, noise, rounding, h, scale, eps, retries):
    """``(value, noise, checked, unresolved)``: ``checked`` where a kink was found and stepped around."""
    spread = eps * scale * np.abs(central)
    suspect = np.zeros(np.shape(central), dtype=bool)
    for side in (1.0, -1.0):
        estimate, screen_rounding = _one_sided(lambda t, side=side: near[side * t], _SCREEN, side * h, eps, spread)
        suspect |= np.abs(estimate - central) > _AGREE * (rounding + screen_rounding) + kinks._slack(central)
    if not np.any(suspect):
        return central, noise, suspect, suspect
    sides = []
    for side in (1.0, -1.0):
        cache = {}

        def at(t, side=side, cache=cache):
            if t not in cache:
                cache[t] = near[side * t] if side * t in near else evaluate(side * t)
            return cache[t]

        coarse, _ = _one_sided(at, tuple((0.5 * k, w / 12.0) for k, w in _ONE_SIDED), side * h / 2, eps, spread)
        fine, side_rounding = _one_sided(at, tuple((0.25 * k, w / 12.0) for k, w in _ONE_SIDED), side * h / 4,
                                         eps, spread)
        correction = (fine - coarse) / 15.0
        # a side is clean when its two steps agree to rounding (and the caller's slack): no kink within its reach
        clean = np.abs(fine - coarse) <= _AGREE * side_rounding + kinks._slack(fine)
        sides.append((fine + correction, side_rounding + np.abs(correction), clean))
    (right, n_right, clean_right), (left, n_left, clean_left) = sides
    apart = np.abs(right - left)
    agree = apart <= _AGREE * (n_left + n_right) + kinks._slack(0.5 * (left + right))
    smooth = suspect & clean_left & clean_right & agree
    use_left = suspect & clean_left & ~clean_right
    use_right = suspect & clean_right & ~clean_left
    value = np.where(use_left, left, np.where(use_right, right, 0.5 * (left + right)))
    error = np.where(use_left, n_left, np.where(use_right, n_right, 0.5 * (n_left + n_right + apart)))
    checked = use_left | use_right
    # both sides kinked (or clean but apart: a kink right at the point)
    open_ = suspect & ~smooth & ~checked
    if retries and np.any(open_):
        # a stencil _SHRINK times smaller fits between the kinks more often
        small = {0.0: near[0.0]}
        for mult in (0.5, 1.0, 2.0):
            for side in (1.0, -1.0):
                small[side * mult] = evaluate(side * mult / _SHRINK)
        h_small = h / _SHRINK
        c_small, n_small, r_small = _central(small, h_small, eps)
        v2, e2, checked2, unresolved2 = _sides(kinks, lambda mult: evaluate(mult / _SHRINK), small, c_small,
                                               n_small, r_small, h_small, scale, eps, retries - 1)
        value, error = np.where(open_, v2, value), np.where(open_, e2, error)
        checked = checked | (open_ & ~unresolved2)
        unresolved = open_ & unresolved2
    else:
        # out of retries: two sides that agree within their (larger) errors still give an estimate
        unresolved = open_ & ~agree
    value = np.where(suspect & ~unresolved, value, central)
    error = np.where(suspect & ~unresolved, error, noise)
    return value, error, checked, unresolved


def _central(values, h, eps):
    """The Richardson-extrapolated central difference from values at 0, +-h/2, +-h, +-2h; its noise and rounding."""
    coarse = magnitude = fine = 0.0
    for mult, weight in _WEIGHTS:
        coarse = coarse + weight * values[float(mult)]
        fine = fine + weight * values[mult / 2.0]
        magnitude = magnitude + abs(weight) * np.abs(values[mult / 2.0])
    d_coarse, d_fine = coarse / (12.0 * h), fine / (6.0 * h)
    correction = (d_fine - d_coarse) / 15.0
    rounding = eps * magnitude / (6.0 * np.abs(h))
    return d_fine + correction, rounding + np.abs(correction), rounding


def _one_sided(values_at, nodes, h, eps, spread):
    """``sum(w * f(t h)) / h`` over ``nodes`` ``(t, w)``, and its rounding noise.

    The noise: ``eps * sum|w f| / |h|`` from the values, and ``sum|w| * spread / |h|`` from the
    rounding of the nodes themselves.
    """
    total = 0.0
    magnitude = 0.0
    weights = 0.0
    for t, w in nodes:
        out = values_at(t)
        total = total + w * out
        magnitude = magnitude + abs(w) * np.abs(out)
        weights += abs(w)
    return total / h, (eps * magnitude + weights * spread) / np.abs(h)


def derivative_along_scalar(fn, array, index, step, kinks=None, at=None):
    """Derivative of the scalar ``fn()`` with respect to ``array[index]``, perturbed in place and restored.

    Returns the derivative and its noise estimate (rounding plus a Richardson
    estimate of the truncation error), as :func:`derivatives_along_events`;
    with ``kinks``, also whether it is unresolved. ``at`` is ``fn()`` at the
    unperturbed array, if the caller has it.
    """
    original = array[index].copy()
    eps = float(np.finfo(array.dtype).eps)
    values = {}

    def value(mult, h):
        array[index] = original + mult * h
        return float(fn())

    def stencil(wanted):
        h = float((original + wanted) - original)
        total = magnitude = 0.0
        for mult, weight in _WEIGHTS:
            out = values[(mult, wanted)] = value(mult, h)
            total += weight * out
            magnitude += abs(weight) * abs(out)
        return total / (12.0 * h), eps * magnitude / (12.0 * abs(h)), h

    try:
        coarse, _, h = stencil(step)
        fine, rounding, _ = stencil(step / 2)
        correction = (fine - coarse) / 15.0
        result, noise = fine + correction, rounding + abs(correction)
        if kinks is None:
            return result, noise
        if at is None:
            array[index] = original
            at = float(fn())
        near = {0.0: at, 0.5: values[(1, step / 2)], -0.5: values[(-1, step / 2)], 1.0: values[(1, step)],
                -1.0: values[(-1, step)], 2.0: values[(2, step)], -2.0: values[(-2, step)]}
        result, noise, unresolved = _review(kinks, lambda mult: np.float64(value(mult, h)), near, np.float64(result),
                                            np.float64(noise), np.float64(rounding), h, abs(float(original)), eps)
        return float(result), float(noise), bool(unresolved)
    finally:
        array[index] = original


def _expand(h, ndim):
    return h.reshape(h.shape + (1,) * (ndim - h.ndim)) if ndim > h.ndim else h


def jacobian(fn, x, event_ndims, step, kinks=None):
    """Jacobian of ``fn`` per batch member: shape ``batch + (m, m)``, ``m`` the event size; and its noise.

    With ``kinks``, also the mask of unresolved entries (see :class:`Kinks`).
    """
    batch, size = event_coordinates(x, event_ndims)
    jac = np.empty(batch + (size, size), dtype=x.dtype)
    noise = np.empty_like(jac)
    unresolved = np.zeros(jac.shape, dtype=bool)
    for j, d, n, bad in derivatives_along_events(lambda v: fn(v).reshape(batch + (size,)), x, event_ndims, step,
                                                 kinks):
        jac[..., :, j] = d
        noise[..., :, j] = n
        unresolved[..., :, j] = bad
    return (jac, noise) if kinks is None else (jac, noise, unresolved)


def input_vjp(value_fn, x, event_ndims, step, kinks=None):
    """Gradient of the per-batch scalar ``value_fn(x)`` (shape ``batch``) with respect to ``x``, and its noise.

    With ``kinks``, also the mask of unresolved entries (see :class:`Kinks`).
    """
    batch, size = event_coordinates(x, event_ndims)
    grad = np.empty(batch + (size,), dtype=x.dtype)
    noise = np.empty_like(grad)
    unresolved = np.zeros(grad.shape, dtype=bool)
    for j, d, n, bad in derivatives_along_events(value_fn, x, event_ndims, step, kinks):
        grad[..., j] = d
        noise[..., j] = n
        unresolved[..., j] = bad
    out = grad.reshape(x.shape), noise.reshape(x.shape)
    return out if kinks is None else out + (unresolved.reshape(x.shape),)
