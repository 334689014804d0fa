"""Verification tools: hold a bijector to its own promises.

:func:`check_bijector` is what the test suite runs over every bijector, and
what users run on their own ``Inline`` bijectors or subclasses.

Tolerances are ``atol + rtol * |expected|`` plus, for every comparison with a
finite difference or a round trip, the rounding noise that the comparison
itself cannot avoid at that point (a Sigmoid at x = 30 sits one part in 1e13
below 1, so its inverse can only recover x to about 1e-3). Points where a map
is well conditioned are thus held to the dtype's precision, and ill-conditioned
points are not failed for what floating point cannot represent.

Kinks. Maps need not be smooth everywhere: a ReLU network (the default
activation) has a kink wherever a unit's input crosses 0, and ``LeakyReLU``
or ``Softsign`` at 0. A central difference whose stencil straddles one
averages two slopes, so every difference is also taken one-sidedly: where the
two sides disagree, the derivative is taken from the side whose stencil does
not cross the kink, or with a stencil small enough to fit between kinks. A
point where no side is clean (a kink at the point itself, where the
derivative does not exist) is skipped, and counted. The reports say how many
derivatives were taken around a kink (``"kinks_checked"``) and how many were
skipped (``"kinks_skipped"``). A wrong derivative is still compared with the
exact one-sided value, so the checks lose nothing at kinks.
"""

import numpy as np

from . import _finite_diff
from ._bijector_checks import _NOISE_FACTOR, _check_direction, _check_forward_vjp, _check_inverse_vjp, _event_axes, \
    _finite_range, _start_points
from ._validation import as_float_array

_DEFAULT_TOLERANCES = {
    np.dtype(np.float64): (1e-7, 1e-9),
    np.dtype(np.float32): (2e-3, 2e-4),
}


class _Checker:
    def __init__(self, name, rtol, atol):
        self.name = name
        self.rtol = rtol
        self.atol = atol
        self.report = {}
        # finite differences that straddle a kink are taken one-sidedly, or skipped, and counted here
        self.kinks = _finite_diff.Kinks(rtol, atol)

    def compare(self, prop, actual, expected, noise=0.0, *, rtol=None, atol=None, skip=None):
        """Fail where ``|actual - expected|`` exceeds the tolerance; ``skip`` (leading axes) masks points out."""
        actual = np.asarray(actual, dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if actual.shape != expected.shape:
            raise AssertionError(f"{self.name}: {prop}: shape {actual.shape} != expected {expected.shape}")
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        if not np.all(np.isfinite(actual)):
            idx = np.unravel_index(int(np.argmax(~np.isfinite(actual))), actual.shape) if actual.ndim else ()
            raise AssertionError(f"{self.name}: {prop}: non-finite value {actual[idx]} at index {idx}")
        err = np.abs(actual - expected)
        if skip is not None:
            skip = np.asarray(skip, dtype=bool)
            skip = np.broadcast_to(skip.reshape(skip.shape + (1,) * (err.ndim - skip.ndim)), err.shape)
            err = np.where(skip, 0.0, err)
        base_tol = atol + rtol * np.abs(expected)
        noise = _NOISE_FACTOR * np.broadcast_to(np.asarray(noise, dtype=np.float64), err.shape)
        tol = base_tol + noise
        # report the worst error, relative to max(1, |expected|), where the
        # comparison is not swamped by rounding noise
        well = noise <= base_tol
        if skip is not None:
            well = well & ~skip
        scaled = err / np.maximum(1.0, np.abs(expected))
        worst = float(scaled[well].max()) if np.any(well) else 0.0
        self.report[prop] = max(self.report.get(prop, 0.0), worst)
        if err.size and np.any(err > tol):
            ratio = np.where(err > tol, err / np.where(tol > 0, tol, np.finfo(np.float64).tiny), 0.0)
            idx = np.unravel_index(int(np.argmax(ratio)), err.shape) if err.ndim else ()
            raise AssertionError(
                f"{self.name}: {prop} failed: worst element at index {tuple(int(i) for i in idx)}: "
                f"got {actual[idx]!r}, expected {expected[idx]!r} (|error| {err[idx]:.3g} > tolerance {tol[idx]:.3g})"
            )


def _slogdet_abs(matrices):
    sign, logabs = np.linalg.slogdet(matrices.astype(np.float64))
    return sign, logabs


class _WithContext:
    """A conditional bijector with its context bound, seen through the unconditional API.

    The vector-Jacobian products keep the context's gradient aside (``last_grad_context``)
    so that the checks written for unconditional bijectors run unchanged.
    """

    def __init__(self, bijector, context):
        self.bijector = bijector
        self.context = context
        self.name, self.dtype, self.event_ndims = bijector.name, bijector.dtype, bijector.event_ndims
        self.last_grad_context = None

    def parameters(self):
        return self.bijector.parameters()

    def __getattr__(self, method):
        bound = getattr(self.bijector, method)
        if method.endswith("_vjp"):
            def vjp(*args, **kwargs):
                grad, grads, self.last_grad_context = bound(*args, context=self.context, **kwargs)
                return grad, grads
            return vjp
        return lambda *args, **kwargs: bound(*args, context=self.context, **kwargs)


def _check_context_grads(c, bound, x, y, k, generator, step):
    """Context gradients of both VJPs against finite differences in the context, the input held fixed."""
    b, context = bound.bijector, bound.context
    dtype = x.dtype
    for method, point, run in (("forward_vjp", x, b.forward_and_log_det), ("inverse_vjp", y, b.inverse_and_log_det)):
        out, log_det = run(point, context=context)
        grad_out = generator.standard_normal(out.shape).astype(dtype)
        grad_ld = generator.standard_normal(log_det.shape).astype(dtype)
        _, _, grad_context = getattr(b, method)(point, grad_out, grad_ld, context=context)
        axes = _event_axes(out, k)

        def per_batch(ctx, point=point, run=run, grad_out=grad_out, grad_ld=grad_ld, axes=axes):
            moved, moved_ld = run(point, context=ctx)
            return (grad_out * moved).sum(axis=axes) + grad_ld * moved_ld

        fd, noise, bad = _finite_diff.input_vjp(per_batch, context, 1, step * np.maximum(1.0, np.abs(context)),
                                                c.kinks)
        c.compare(f"{method} grad of the context vs finite differences", grad_context, fd, noise, skip=bad)


def check_bijector(bijector, x, *, rtol=None, atol=None, rng=0, check_vjp=True, context=None):
    """Check a bijector at base-space points ``x``; raise ``AssertionError`` on the first failure.

    Properties checked, each at every point:

    - fused passes equal unfused ones (``forward_and_log_det`` vs ``forward`` and
      ``forward_log_det_jacobian``; the same for the inverse);
    - shapes: ``forward`` keeps the shape, log-dets have one value per event;
    - round trips ``inverse(forward(x)) == x`` and ``forward(inverse(y)) == y``;
    - the forward log-det equals log|det| of a finite-difference Jacobian
      (the log-derivative for elementwise bijectors);
    - ``inverse_log_det_jacobian(y) == -forward_log_det_jacobian(x)`` at ``y = forward(x)``;
    - for a scalar map (``event_ndims == 0``), the direction it declares
      (which the CDF of a transformed distribution uses) against the sign of
      the finite-difference slope;
    - ``forward_vjp`` and ``inverse_vjp`` against finite differences, for the
      input and for every parameter, with random upstream gradients of the
      output and of the log-det.

    Parameters
    ----------
    bijector : Bijector
    x : array_like
        Points in the forward domain, shaped ``batch + event``.
    rtol, atol : float, optional
        Default by dtype: (1e-7, 1e-9) for float64, (2e-3, 2e-4) for float32.
    rng : Generator or int
        For the random upstream gradients.
    check_vjp : bool
        Skip the gradient checks when False.
    context : array_like, optional
        For a conditional bijector: its context, shape ``batch + (context_size,)``
        (one row per point). Every property is checked at that context, and
        the context gradients of both VJPs against finite differences in it.

    Notes
    -----
    Batch members must be independent (a ``BatchNorm`` in training mode
    couples them: check it in evaluation mode). A layer that initializes from
    its first data batch (an ``ActNorm`` not yet ``initialized``) is
    initialized first, by one pass ``inverse(forward(x))``, so that the whole
    check sees one map; a parameter that changes during the check anyway
    fails it, with that reason. Finite differences that straddle a kink of
    the map (a ReLU unit's, ``LeakyReLU`` at 0) are taken from the kink's
    clean side, or skipped where there is none (see the module's
    docstring). When a finite-difference
    stencil would leave the bijector's domain, the step shrinks for the whole
    batch, so points near a domain bound are best checked in a call of their
    own, apart from the bulk.

    Returns
    -------
    dict
        For each property (``"log_det_vs_jacobian"`` and the rest), the largest
        error relative to ``max(1, |expected|)`` at the points where rounding
        noise does not dominate the comparison: a number for reports. For a
        scalar map (``event_ndims == 0``) also ``"forward_finite_range"`` and
        ``"inverse_finite_range"``: ``(low, high)``, the interval of inputs
        around the points given on which that map returns finite values (for
        every parameter element). Beyond it the map overflows the dtype or
        leaves its domain: ``Exp`` gives ``(-1.8e308, 709.78)`` in float64, so
        a flow through it samples ``inf`` from base points above 709.78.
        And ``"kinks_checked"`` / ``"kinks_skipped"``: how many derivatives
        were taken around a kink, and how many were left out for want of a
        clean side (counts).
    """
    x = as_float_array(x, bijector.dtype, "check_bijector", "x")
    if x.size == 0:
        raise ValueError(f"check_bijector: x holds no points (shape {x.shape}); pass at least one")
    if bijector.context_size or context is not None:
        context = bijector._prepare_context(context, x, "check_bijector").copy()
        bijector = _WithContext(bijector, context)
    _initialize_data_dependent(bijector, x)
    before = {name: np.array(value, copy=True) for name, value in bijector.parameters()}
    try:
        return _check_bijector(bijector, x, rtol, atol, rng, check_vjp, before)
    except AssertionError as err:
        changed = _changed_parameters(bijector, before)
        if changed:
            raise AssertionError(f"{bijector.name}: parameter {changed[0]} changed while the bijector was being "
                                 f"checked (a side effect of its passes), so the passes compared were of different "
                                 f"maps; the first failure seen was: {err}") from err
        raise


def _initialize_data_dependent(bijector, x):
    """Run the first data batch through layers that initialize from it (ActNorm), before anything is compared."""
    from .train.loops import modules
    inner = bijector.bijector if isinstance(bijector, _WithContext) else bijector
    pending = [m for m in modules(inner) if getattr(m, "initialized", True) is False]
    if not pending:
        return
    bijector.inverse(bijector.forward(x))
    left = [m.name for m in pending if not m.initialized]
    if left:
        raise AssertionError(f"check_bijector: {', '.join(left)} did not initialize from the points given "
                             f"(an empty batch?): initialize it first")


def _changed_parameters(bijector, before):
    return [name for name, value in bijector.parameters()
            if name not in before or not np.array_equal(value, before[name], equal_nan=True)]


def _check_bijector(bijector, x, rtol, atol, rng, check_vjp, before):
    dtype = x.dtype
    default_rtol, default_atol = _DEFAULT_TOLERANCES[dtype]
    c = _Checker(bijector.name, default_rtol if rtol is None else rtol, default_atol if atol is None else atol)
    eps = float(np.finfo(dtype).eps)
    k = bijector.event_ndims
    if x.ndim < k:
        raise ValueError(f"check_bijector: x must have at least {k} dimension(s) for {bijector.name}")

    y = bijector.forward(x)
    if y.shape != x.shape:
        # parameters broadcast the input up; check at the full shape
        x = np.broadcast_to(x, y.shape).copy()
        y = bijector.forward(x)
    if y.dtype != dtype:
        raise AssertionError(f"{bijector.name}: forward returned dtype {y.dtype} for {dtype} input")
    batch = x.shape[:x.ndim - k]

    # fused vs unfused, and shapes
    y_fused, ld = bijector.forward_and_log_det(x)
    if ld.shape != batch:
        raise AssertionError(f"{bijector.name}: forward log-det has shape {ld.shape}; expected {batch}")
    if ld.dtype != dtype:
        raise AssertionError(f"{bijector.name}: forward log-det has dtype {ld.dtype} for {dtype} input")
    tight = dict(rtol=8 * eps, atol=8 * eps)
    c.compare("forward_and_log_det vs forward", y_fused, y, **tight)
    c.compare("forward_and_log_det vs forward_log_det_jacobian", ld, bijector.forward_log_det_jacobian(x), **tight)

    # finite-difference Jacobian of the forward map at x
    step = _finite_diff.default_step(dtype)
    jac, jac_noise, jac_bad = _finite_diff.jacobian(bijector.forward, x, k, step, c.kinks)
    # batch members where a derivative could not be resolved (a kink right at the point) are left out
    skip = jac_bad.any(axis=(-2, -1))
    jac64 = jac.astype(np.float64)
    sign, fd_ld = _slogdet_abs(jac64)
    if np.any(sign == 0):
        idx = np.unravel_index(int(np.argmax(sign == 0)), sign.shape) if sign.ndim else ()
        raise AssertionError(
            f"{bijector.name}: the finite-difference Jacobian is singular at batch index {tuple(map(int, idx))}: "
            f"the map is flat there at {dtype} precision (choose points it can resolve)")
    jac_inv = np.linalg.inv(jac64)
    # |d log det| <= sum_ij |J^-1_ji| |dJ_ij|
    ld_noise = np.einsum("...ji,...ij->...", np.abs(jac_inv), jac_noise.astype(np.float64))
    c.compare("log_det_vs_jacobian", ld, fd_ld, ld_noise, skip=skip)
    if k == 0 and not isinstance(bijector, _WithContext):
        _check_direction(bijector, jac[..., 0, 0], jac_noise[..., 0, 0], skip)

    # round trips, allowing for the rounding of y (resp. x) carried through the inverse (resp. forward)
    m = jac.shape[-1]
    y_flat = np.abs(y.reshape(batch + (m,))).astype(np.float64)
    x_flat = np.abs(x.reshape(batch + (m,))).astype(np.float64)
    x_back = bijector.inverse(y)
    noise_x = eps * np.einsum("...ij,...j->...i", np.abs(jac_inv), y_flat).reshape(x.shape)
    c.compare("inverse(forward(x)) == x", x_back, x, noise_x)
    y_again = bijector.forward(x_back)
    noise_y = eps * np.einsum("...ij,...j->...i", np.abs(jac64), x_flat).reshape(y.shape) + eps * np.abs(y)
    c.compare("forward(inverse(y)) == y", y_again, y, noise_y)

    # inverse log-det
    x_fused, ild = bijector.inverse_and_log_det(y)
    c.compare("inverse_and_log_det vs inverse", x_fused, x_back, **tight)
    c.compare("inverse_and_log_det vs inverse_log_det_jacobian", ild, bijector.inverse_log_det_jacobian(y), **tight)
    # ild is evaluated at the rounded y, i.e. at x moved by up to noise_x: allow the log-det's change over that
    ld_grad, ld_grad_noise, ld_grad_bad = _finite_diff.input_vjp(bijector.forward_log_det_jacobian, x, k,
                                                                 step * np.maximum(1.0, np.abs(x)), c.kinks)
    skip = skip | ld_grad_bad.reshape(batch + (m,)).any(axis=-1)
    ld_shift = (np.abs(ld_grad) * noise_x).reshape(batch + (m,)).sum(axis=-1)
    c.compare("inverse log-det == -forward log-det", ild, -ld, ld_noise + ld_shift, skip=skip)

    if check_vjp:
        generator = np.random.default_rng(rng)
        _check_forward_vjp(c, bijector, x, y, ld, k, generator, step, skip)
        _check_inverse_vjp(c, bijector, x, y, ild, jac64, ld_grad, ld_grad_noise, jac_noise, k, generator, step,
                           skip)
        if isinstance(bijector, _WithContext):
            _check_context_grads(c, bijector, x, y, k, generator, step)
    changed = _changed_parameters(bijector, before)
    if changed:
        raise AssertionError(f"{bijector.name}: parameter {changed[0]} changed while the bijector was being "
                             f"checked (a side effect of its passes); the checks compared different maps")
    c.report["kinks_checked"] = c.kinks.checked
    c.report["kinks_skipped"] = c.kinks.skipped
    if k == 0 and not isinstance(bijector, _WithContext):
        c.report["forward_finite_range"] = _finite_range(bijector.forward, _start_points(bijector.forward, x))
        c.report["inverse_finite_range"] = _finite_range(bijector.inverse, _start_points(bijector.inverse, y))
    return dict(c.report)


def check_gradients(flow, x, *, rtol=1e-5, reverse_kl=True, rng=0, max_entries=None, backend=None, context=None):
    """Check the exact gradients of a flow's losses against central finite differences.

    For the mean negative log-likelihood of ``x`` (and, with ``reverse_kl``, for
    the reverse KL to a standard normal target through reparameterized samples),
    every parameter entry's gradient from :func:`nflow_np.train.value_and_grad`
    is compared with a finite difference of the loss. An entry passes when
    ``|error| <= rtol * (|fd| + max |gradient of that parameter|)`` plus the
    finite difference's own noise. Check in float64.

    ``max_entries`` limits the entries checked per parameter array (a random
    subset drawn from ``rng``) for large networks. ``backend`` (``"numpy"``,
    ``"numba"`` or ``"cuda"``, default :func:`nflow_np.get_backend`) picks which
    implementation of the NLL and its gradient is checked. A conditional
    flow takes its ``context`` rows; its gradients reach the conditioner
    networks through them (the reverse KL is skipped: it trains
    unconditional flows). So is the reverse KL of a flow whose base has
    trainable parameters (its samples are not reparameterizable in them);
    the NLL check covers those parameters (``distribution.*``).

    A loss through ReLU networks has kinks in every parameter: an entry whose
    difference stencil straddles one is differenced from the kink's clean
    side, or with a smaller stencil, and one with no clean side (a kink right
    at the parameter's value) is skipped (see :mod:`nflow_np.testing`).

    Returns a dict ``{loss: worst relative error}``, with the counts
    ``"kinks_checked"`` and ``"kinks_skipped"``; raises ``AssertionError``
    naming the parameter and entry on failure.
    """
    from .train.loops import set_training
    from .train.losses import nll_and_grad, reverse_kl_and_grad

    generator = np.random.default_rng(rng)
    x = as_float_array(x, flow.dtype, "check_gradients", "x")
    nll_and_grad(flow, x, backend, context)   # data-dependent initializations (ActNorm) happen on the first pass
    losses = {"nll": lambda: nll_and_grad(flow, x, backend, context)}
    if reverse_kl and not flow.context_size and not dict(flow.distribution.parameters()):
        z = flow.distribution.sample(x.shape[0], generator)
        k = flow.event_ndims
        axes = tuple(range(-k, 0)) if k else ()

        def target(points):
            return -0.5 * (points * points).sum(axis=axes) if axes else -0.5 * points * points

        def target_grad(points):
            return -points

        losses["reverse_kl"] = lambda: reverse_kl_and_grad(flow, target, None, z=z, target_grad=target_grad)
    step = _finite_diff.default_step(flow.dtype)
    report = {}
    kinks = _finite_diff.Kinks(rtol, 0.0)
    for label, evaluate in losses.items():
        at, grads = evaluate()
        worst = 0.0
        # a floor for parameters whose gradient is all zero (masked MADE weights, say)
        floor = 1e-6 * max((float(np.abs(g).max()) for g in grads.values() if np.size(g)), default=0.0)
        for name, array in flow.parameters():
            grad = np.asarray(grads[name], dtype=np.float64)
            scale = max(float(np.abs(grad).max()) if grad.size else 0.0, floor)
            kinks.atol = rtol * scale
            indices = list(np.ndindex(array.shape))
            if max_entries is not None and len(indices) > max_entries:
                chosen = generator.choice(len(indices), size=max_entries, replace=False)
                indices = [indices[i] for i in chosen]
            for index in indices:
                h = step * max(1.0, abs(float(array[index])))
                fd, noise, unresolved = _finite_diff.derivative_along_scalar(lambda: evaluate()[0], array, index, h,
                                                                             kinks, float(at))
                if unresolved:
                    continue    # a kink right at this value of the parameter (counted in the report)
                err = abs(grad[index] - fd)
                tol = rtol * (abs(fd) + scale) + _NOISE_FACTOR * noise
                if err > tol:
                    raise AssertionError(f"check_gradients: {label} gradient of {name}{list(index)}: got "
                                         f"{grad[index]!r}, finite differences give {fd!r} (|error| {err:.3g} > "
                                         f"tolerance {tol:.3g})")
                worst = max(worst, err / max(abs(fd) + scale, np.finfo(np.float64).tiny))
        report[label] = worst
    report["kinks_checked"] = kinks.checked
    report["kinks_skipped"] = kinks.skipped
    set_training(flow, False)
    return report
