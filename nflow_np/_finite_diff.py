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
side). Where either side disagrees with the central value (or the central
difference's own two steps disagree beyond rounding), each side is
estimated again to fourth order at two steps: a side is clean when those two
and its screening estimate agree. Two clean sides that agree mean a smooth
point after all (their mean is used). Otherwise the derivative straddles a
kink: it is taken again with a stencil ``_SHRINK`` times smaller (up to
``_RETRIES`` times), which fits between kinks more often; failing that, from
the one clean side (a one-sided derivative), or from two sides that agree
within their larger errors. What is still open (no clean side, or two clean
sides that disagree: a kink at the point itself) is unresolved: the caller
skips it, and the policy counts it.
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


def _review(kinks, evaluate, near, central, noise, rounding, h, scale, eps, extra=0.0):
    """The derivative where ``central`` may straddle a kink: ``(value, noise, unresolved)``; see the module.

    ``near`` maps multiples of ``h`` to the function's values there (0, +-h/2, +-h, +-2h);
    ``evaluate(mult)`` computes it elsewhere. ``scale`` is ``|x|`` at the point: the nodes
    ``x + mult * h`` are rounded to within ``eps * |x|``, which moves each value by about
    ``eps * |x| * |f'|``. ``noise`` is the central difference's estimated error, ``rounding`` the part of it
    that rounding accounts for: the rest (the Richardson correction) is what a kink would inflate. ``extra``
    is rounding in each value beyond ``eps * |value|`` (from terms of a sum that cancel).
    """
    value, noise, checked, unresolved = _sides(kinks, evaluate, near, central, noise, rounding, h, scale, eps,
                                               extra, _RETRIES)
    kinks.checked += int(np.count_nonzero(checked))
    kinks.skipped += int(np.count_nonzero(unresolved))
    return value, noise, unresolved


def _sides(kinks, evaluate, near, central, noise, rounding, h, scale, eps, extra, retries):
    """``(value, noise, checked, unresolved)``: ``checked`` where a kink was found and stepped around."""
    spread = eps * scale * np.abs(central) + extra
    # the central difference's own two steps disagreeing beyond rounding: not smooth at this scale
    suspect = 15.0 * (noise - rounding) > _AGREE * rounding + kinks._slack(central)
    screens = {}
    for side in (1.0, -1.0):
        screens[side] = _one_sided(lambda t, side=side: near[side * t], _SCREEN, side * h, eps, spread)
        estimate, screen_rounding = screens[side]
        off = np.abs(estimate - central)
        suspect |= off > _AGREE * (rounding + screen_rounding) + kinks._slack(central)
        # where it passes, a kink may still hide in what rounding lets through: with one clean side, the
        # central value is within about this of the derivative
        noise = np.maximum(noise, off)
    if not np.any(suspect):
        return central, noise, suspect, suspect
    sides = {}
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
        estimate, error = fine + correction, side_rounding + np.abs(correction)
        # a side is clean when its estimates at two steps, and the screen's from other points, agree to
        # rounding (and the caller's slack): no kink within its reach
        screen, screen_rounding = screens[side]
        clean = ((np.abs(fine - coarse) <= _AGREE * side_rounding + kinks._slack(fine))
                 & (np.abs(screen - estimate) <= _AGREE * (error + screen_rounding) + kinks._slack(estimate)))
        sides[side] = estimate, error, clean
    (right, n_right, clean_right), (left, n_left, clean_left) = sides[1.0], sides[-1.0]
    apart = np.abs(right - left)
    agree = apart <= _AGREE * (n_left + n_right) + kinks._slack(0.5 * (left + right))
    mean, n_mean = 0.5 * (left + right), 0.5 * (n_left + n_right + apart)
    smooth = suspect & clean_left & clean_right & agree
    value, error = np.where(smooth, mean, central), np.where(smooth, n_mean, noise)
    # the rest straddles a kink: first a stencil _SHRINK times smaller, which fits between kinks more often
    checked = np.zeros(np.shape(central), dtype=bool)
    unresolved = suspect & ~smooth
    if retries and np.any(unresolved):
        small = {0.0: near[0.0]}
        for mult in (0.5, 1.0, 2.0):
            for side in (1.0, -1.0):
                small[side * mult] = evaluate(side * mult / _SHRINK)
        h_small = h / _SHRINK
        c_small, n_small, r_small = _central(small, h_small, eps, extra)
        v2, e2, _, unresolved2 = _sides(kinks, lambda mult: evaluate(mult / _SHRINK), small, c_small, n_small,
                                        r_small, h_small, scale, eps, extra, retries - 1)
        take = unresolved & ~unresolved2
        value, error = np.where(take, v2, value), np.where(take, e2, error)
        checked |= take
        unresolved &= unresolved2
    # then the one clean side, if there is exactly one (a one-sided derivative)
    use_left = unresolved & clean_left & ~clean_right
    use_right = unresolved & clean_right & ~clean_left
    value = np.where(use_left, left, np.where(use_right, right, value))
    error = np.where(use_left, n_left, np.where(use_right, n_right, error))
    checked |= use_left | use_right
    unresolved &= ~(use_left | use_right)
    # last, two sides that agree within their (larger) errors still give an estimate
    fallback = unresolved & agree
    value, error = np.where(fallback, mean, value), np.where(fallback, n_mean, error)
    checked |= fallback
    unresolved &= ~fallback
    return value, error, checked, unresolved


def _central(values, h, eps, extra=0.0):
    """The Richardson-extrapolated central difference from values at 0, +-h/2, +-h, +-2h; its noise and rounding."""
    coarse = magnitude = fine = 0.0
    for mult, weight in _WEIGHTS:
        coarse = coarse + weight * values[float(mult)]
        fine = fine + weight * values[mult / 2.0]
        magnitude = magnitude + abs(weight) * np.abs(values[mult / 2.0])
    d_coarse, d_fine = coarse / (12.0 * h), fine / (6.0 * h)
    correction = (d_fine - d_coarse) / 15.0
    rounding = (eps * magnitude + 18.0 * extra) / (6.0 * np.abs(h))
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
    unperturbed array, if the caller has it. ``fn`` may return
    ``(value, magnitude)``, ``magnitude`` the sum of the absolute values of the
    terms that ``value`` sums: rounding is ``eps * magnitude``, which a sum
    that cancels would otherwise hide.
    """
    original = array[index].copy()
    eps = float(np.finfo(array.dtype).eps)
    values = {}
    largest = [0.0]

    def value(mult, h):
        array[index] = original + mult * h
        out, magnitude = _value_and_magnitude(fn())
        largest[0] = max(largest[0], magnitude)
        return out

    def stencil(wanted):
        h = float((original + wanted) - original)
        total = 0.0
        for mult, weight in _WEIGHTS:
            out = values[(mult, wanted)] = value(mult, h)
            total += weight * out
        return total / (12.0 * h), eps * largest[0] * 18.0 / (12.0 * abs(h)), h

    try:
        coarse, _, h = stencil(step)
        fine, rounding, _ = stencil(step / 2)
        correction = (fine - coarse) / 15.0
        result, noise = fine + correction, rounding + abs(correction)
        if kinks is None:
            return result, noise
        if at is None:
            array[index] = original
            at = fn()
        at, magnitude = _value_and_magnitude(at)
        near = {0.0: at, 0.5: values[(1, step / 2)], -0.5: values[(-1, step / 2)], 1.0: values[(1, step)],
                -1.0: values[(-1, step)], 2.0: values[(2, step)], -2.0: values[(-2, step)]}
        # the values' own rounding, beyond the eps * |value| that the one-sided estimates count
        extra = eps * max(largest[0], magnitude)
        result, noise, unresolved = _review(kinks, lambda mult: np.float64(value(mult, h)), near, np.float64(result),
                                            np.float64(noise), np.float64(rounding), h, abs(float(original)), eps,
                                            extra)
        return float(result), float(noise), bool(unresolved)
    finally:
        array[index] = original


def _value_and_magnitude(out):
    if isinstance(out, tuple):
        return float(out[0]), abs(float(out[1]))
    return float(out), abs(float(out))


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
