"""The checks of :func:`nflow_np.testing.check_bijector` past the round trip and the log-det: where a scalar map
stays finite, its direction, and the vector-Jacobian products against finite differences (kinks included, see
:mod:`nflow_np.testing`)."""

import numpy as np

from . import _finite_diff

# Rounding noise is an estimate; the checks allow this many times it.
_NOISE_FACTOR = 16.0


def _event_axes(arr, event_ndims):
    return tuple(range(arr.ndim - event_ndims, arr.ndim))


def _start_points(fn, points):
    """The first row of ``points`` (a point per parameter element, if the parameters broadcast along it), or all."""
    row = np.array(points[0]) if points.ndim else points.copy()
    try:
        if np.shape(fn(row)) == row.shape:
            return row
    except ValueError:
        pass
    return points.copy()


def _finite_range(fn, start):
    """``(low, high)``: the interval around ``start`` on which the scalar map ``fn`` returns finite values.

    Searched by bisection on the floats themselves (ordered as integers), from ``start`` out to the
    dtype's largest numbers, for every element of ``start`` (one per parameter element); the
    narrowest interval over the elements is returned. Inputs ``fn`` refuses (outside its domain)
    count as not finite, so a domain's edge bounds the interval too.
    """
    dtype = start.dtype
    big = float(np.finfo(dtype).max)
    ints = np.int64 if dtype.itemsize == 8 else np.int32
    least = np.iinfo(ints).min

    def key(v):     # negative floats' bit patterns run backwards: mirror them below zero
        i = np.asarray(v, dtype=dtype).view(ints)
        return np.where(i >= 0, i, least - np.minimum(i, 0))

    def value(k):
        return np.asarray(np.where(k >= 0, k, least - np.minimum(k, 0)), dtype=ints).view(dtype)

    def finite(v):
        with np.errstate(all="ignore"):
            try:
                return np.isfinite(fn(v))
            except ValueError:
                pass
            out = np.zeros(v.shape, dtype=bool)
            for idx in np.ndindex(v.shape):   # one element at a time, the others at known finite points
                one = start.copy()
                one[idx] = v[idx]
                try:
                    out[idx] = np.isfinite(fn(one))[idx]
                except ValueError:
                    pass
            return out

    ends = []
    for edge in (-big, big):
        far = np.full(start.shape, edge, dtype=dtype)
        inside, outside = key(start), key(far)
        done = finite(far)
        inside = np.where(done, outside, inside)
        while True:
            # the next float between inside (finite) and outside (not), halfway in the integer ordering
            gap = (outside > inside + 1) if edge > 0 else (inside > outside + 1)
            gap &= ~done
            if not np.any(gap):
                break
            mid = (inside >> 1) + (outside >> 1) + (inside & outside & 1)
            ok = finite(value(mid))
            inside = np.where(gap & ok, mid, inside)
            outside = np.where(gap & ~ok, mid, outside)
        ends.append(value(inside).astype(np.float64))
    return float(np.max(ends[0])), float(np.min(ends[1]))


def _check_direction(bijector, slope, noise, skip):
    """A scalar map's declared direction (``_is_increasing``, which the CDF of a flow uses) against its slope."""
    try:
        declared = bijector._is_increasing()
    except ValueError:
        return      # not a monotone scalar map by its own account (an Inline without is_increasing)
    declared = np.broadcast_to(np.asarray(declared, dtype=bool), slope.shape)
    slope = slope.astype(np.float64)
    resolved = np.abs(slope) > _NOISE_FACTOR * noise.astype(np.float64)
    wrong = resolved & ~skip & ((slope > 0) != declared)
    if np.any(wrong):
        idx = np.unravel_index(int(np.argmax(wrong)), wrong.shape) if wrong.ndim else ()
        said, does = ("increasing", "decreases") if declared[idx] else ("decreasing", "increases")
        raise AssertionError(f"{bijector.name}: direction failed: declared {said} (_is_increasing, which the CDF "
                             f"of a transformed distribution uses), but the map {does} at index "
                             f"{tuple(int(i) for i in idx)} (finite-difference slope {slope[idx]:.6g})")


def _params_of(bijector):
    return list(bijector.parameters())


def _check_forward_vjp(c, bijector, x, y, ld, k, generator, step, skip):
    dtype = x.dtype
    grad_y = generator.standard_normal(y.shape).astype(dtype)
    grad_ld = generator.standard_normal(ld.shape).astype(dtype)
    # members left out take no part: zero upstream gradients keep their kinks out of the parameters' totals
    grad_y[skip] = 0
    grad_ld[skip] = 0
    grad_x, grads = bijector.forward_vjp(x, grad_y, grad_ld)
    _check_vjp_result(c, bijector, "forward_vjp", grad_x, x, grads)
    axes = _event_axes(y, k)

    def per_batch(point):
        out, log_det = bijector.forward_and_log_det(point)
        return (grad_y * out).sum(axis=axes) + grad_ld * log_det

    fd, noise, bad = _finite_diff.input_vjp(per_batch, x, k, step * np.maximum(1.0, np.abs(x)), c.kinks)
    c.compare("forward_vjp grad_x vs finite differences", grad_x, fd, noise, skip=bad)

    def total():
        out, log_det = bijector.forward_and_log_det(x)
        return _sum_and_magnitude(grad_y * out, grad_ld * log_det)

    _check_param_grads(c, bijector, "forward_vjp", grads, total, step)


def _sum_and_magnitude(*terms):
    """The sum of all entries of ``terms``, and the sum of their absolute values (its rounding scale)."""
    return (sum(float(np.sum(t, dtype=np.float64)) for t in terms),
            sum(float(np.sum(np.abs(t), dtype=np.float64)) for t in terms))


def _check_inverse_vjp(c, bijector, x, y, ild, jac, ld_grad, ld_grad_noise, jac_noise, k, generator, step, skip):
    # Finite differences in y-space break down exactly where the inverse is
    # interesting (a Sigmoid near 1 leaves no room for a stencil), so the
    # expected inverse gradients are built from x-space finite differences by
    # the chain rule: with x = f^-1(y) and inverse log-det -g(x),
    #   dL/dy = J^-T (grad_x - grad_ld * dg/dx)
    #   dL/dp = -d/dp [sum(w * f(x; p)) + sum(grad_ld * g(x; p))] at fixed x, w = dL/dy.
    dtype = x.dtype
    grad_x_up = generator.standard_normal(x.shape).astype(dtype)
    grad_ld = generator.standard_normal(ild.shape).astype(dtype)
    grad_x_up[skip] = 0
    grad_ld[skip] = 0
    grad_y, grads = bijector.inverse_vjp(y, grad_x_up, grad_ld)
    _check_vjp_result(c, bijector, "inverse_vjp", grad_y, y, grads)
    batch = x.shape[:x.ndim - k]
    m = jac.shape[-1]
    gld = grad_ld.astype(np.float64)[..., None]
    rhs = grad_x_up.reshape(batch + (m,)).astype(np.float64) - gld * ld_grad.reshape(batch + (m,))
    jac_t_inv = np.linalg.inv(np.swapaxes(jac, -1, -2))
    w = np.einsum("...ij,...j->...i", jac_t_inv, rhs)
    # noise: J's own noise carried through the solve, and that of dg/dx
    carried = np.einsum("...ji,...j->...i", jac_noise.astype(np.float64), np.abs(w)) \
        + np.abs(gld) * ld_grad_noise.reshape(batch + (m,))
    w_noise = np.einsum("...ij,...j->...i", np.abs(jac_t_inv), carried)
    c.compare("inverse_vjp grad_y vs finite differences", grad_y, w.reshape(y.shape), w_noise.reshape(y.shape))
    w = w.reshape(y.shape).astype(dtype)
    w_noise = w_noise.reshape(y.shape).astype(dtype)

    def total():
        out, log_det = bijector.forward_and_log_det(x)
        value, magnitude = _sum_and_magnitude(w * out, grad_ld * log_det)
        return -value, magnitude

    def carried_noise():
        # how the noise in w moves the parameter gradient: ~ sum(w_noise * dy/dp)
        return (w_noise * bijector.forward(x)).sum()

    _check_param_grads(c, bijector, "inverse_vjp", grads, total, step, carried_noise)


def _check_vjp_result(c, bijector, method, grad, like, grads):
    if grad.shape != like.shape:
        raise AssertionError(f"{bijector.name}: {method} input gradient has shape {grad.shape}; expected {like.shape}")
    if grad.dtype != like.dtype:
        raise AssertionError(f"{bijector.name}: {method} input gradient has dtype {grad.dtype}; expected {like.dtype}")
    names = dict(_params_of(bijector))
    if set(grads) != set(names):
        raise AssertionError(f"{bijector.name}: {method} returned gradients for {sorted(grads)}; "
                             f"parameters are {sorted(names)}")
    for name, g in grads.items():
        if np.shape(g) != names[name].shape:
            raise AssertionError(f"{bijector.name}: {method} gradient of {name} has shape {np.shape(g)}; "
                                 f"expected {names[name].shape}")
        if np.asarray(g).dtype != names[name].dtype:
            raise AssertionError(f"{bijector.name}: {method} gradient of {name} has dtype {np.asarray(g).dtype}; "
                                 f"the parameter is {names[name].dtype}")


def _check_param_grads(c, bijector, method, grads, total_fn, step, carried_noise_fn=None):
    at = total_fn()
    for name, array in _params_of(bijector):
        fd = np.empty(array.shape, dtype=np.float64)
        noise = np.empty(array.shape, dtype=np.float64)
        bad = np.zeros(array.shape, dtype=bool)
        for index in np.ndindex(array.shape):
            h = step * max(1.0, abs(float(array[index])))
            fd[index], noise[index], bad[index] = _finite_diff.derivative_along_scalar(total_fn, array, index, h,
                                                                                       c.kinks, at)
            if carried_noise_fn is not None:
                carried, _ = _finite_diff.derivative_along_scalar(carried_noise_fn, array, index, h)
                noise[index] += abs(carried)
        c.compare(f"{method} grad of {name} vs finite differences", grads[name], fd, noise, skip=bad)
