"""Rational-quadratic spline kernels (nflow_np.kernels.spline) and the RationalQuadraticSpline bijector.

The compiled twins against the NumPy reference (both dtypes, parameters as non-contiguous views, points in
every bin, exactly on every knot, at +-B and outside); the reference's maps, log-dets and VJPs against
finite differences; knots mapping exactly onto knots; the identity at zero parameters; monotonicity; extreme
parameters; the bijector's validation. check_bijector itself runs the bijector through tests/bijector_cases.py.
"""

import re

import numpy as np
import pytest

from nflow_np import bijectors as nb
from nflow_np.kernels import spline
from nflow_np.kernels.backend import load_numba
from nflow_np.kernels.specs import SplineSpec
from nflow_np.kernels.transforms import spline as scalar

B = 3.0
SETTINGS = (B, 1e-3, 1e-3, 1e-3)   # bound, min_width, min_height, min_derivative
BOUNDED = SETTINGS + ("bounded",)  # ... and the parameterization (softplus when absent)
PARAMETERIZATIONS = pytest.mark.parametrize("settings", [SETTINGS, BOUNDED], ids=["softplus", "bounded"])
DTYPES = [np.float64, np.float32]
KERNELS = ("forward", "inverse", "forward_backward", "inverse_backward")


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


def params(rng, n, m, k, dtype, scale=1.0, layout="views"):
    """``uw, uh, ud`` of shapes (n, m, K), (n, m, K), (n, m, K - 1), as a network would hand them over."""
    if layout == "views":         # slices of one (n, m, 3K - 1) output
        net = (scale * rng.standard_normal((n, m, 3 * k - 1))).astype(dtype)
    elif layout == "transposed":  # parameter-major, as MADE lays its outputs out: neither C nor F order
        net = (scale * rng.standard_normal((3 * k - 1, n, m))).astype(dtype).transpose(1, 2, 0)
    else:
        return tuple((scale * rng.standard_normal((n, m, size))).astype(dtype) for size in (k, k, k - 1))
    return net[..., :k], net[..., k:2 * k], net[..., 2 * k:]


def knots(uw, uh, ud, settings=SETTINGS):
    s = spline._spline_numpy(uw, uh, ud, *settings)
    return s["xs"], s["ys"], s["d"]


def points(rng, xs, dtype):
    """Rows cycle through: exactly on knot q (every q, +-B included), inside bin q, outside, anywhere."""
    n, m, k1 = xs.shape
    x = np.empty((n, m), dtype=dtype)
    cols = np.arange(m)
    for r in range(n):
        kind, q = r % 4, r // 4
        if kind == 0:
            x[r] = xs[r, cols, q % k1]
        elif kind == 1:
            lo, hi = xs[r, cols, q % (k1 - 1)], xs[r, cols, q % (k1 - 1) + 1]
            x[r] = lo + (hi - lo) * rng.uniform(0.05, 0.95, m)
        elif kind == 2:
            x[r] = rng.choice([-1.0, 1.0], m) * (B + rng.uniform(1e-3, 2.0, m))
        else:
            x[r] = rng.uniform(-B, B, m)
    return x


def as_views(uw, uh, ud):
    """The parameters copied into one (n, m, 3K - 1) array and sliced back out: strided, writable views.

    Every call of a compiled twin here passes views like these (and C-contiguous points), so that Numba
    compiles each kernel once per dtype; other layouts (contiguous, empty, K = 1) are the slow test's.
    """
    net = np.concatenate([uw, uh, ud], axis=-1)
    k = uw.shape[-1]
    return net[..., :k], net[..., k:2 * k], net[..., 2 * k:]


def run_compiled(name, point, uw, uh, ud, upstream, settings):
    """Kernel ``name`` through the frames' compiled scalar math (:mod:`nflow_np.kernels.transforms.spline`),
    one element at a time, each element's parameters one row of a by-coordinate network output."""
    k = uw.shape[-1]
    n, m = point.shape
    p = np.ascontiguousarray(np.concatenate([uw, uh, ud], axis=-1).reshape(n * m, 3 * k - 1), dtype=point.dtype)
    st = scalar.settings(np.array(scalar.constants(SplineSpec(k, *settings)), dtype=point.dtype))
    values = point.reshape(-1)
    if name in ("forward", "inverse"):
        step = scalar.density if name == "forward" else scalar.sampling
        out = np.array([step(v, p, r, 0, 1, st) for r, v in enumerate(values)], dtype=point.dtype).reshape(n * m, 2)
        return out[:, 0].reshape(n, m), out[:, 1].reshape(n, m)
    gy, gld = (u.reshape(-1) for u in upstream)
    for r, v in enumerate(values):      # the VJP reads the parameters as the density pass leaves them
        scalar.density(v, p, r, 0, 1, st)
    gp = np.empty_like(p)
    g_in = np.array([scalar.density_vjp(v, gy[r], gld[r], p, gp, r, 0, 1, st) for r, v in enumerate(values)],
                    dtype=point.dtype).reshape(n, m)
    gp = gp.reshape(n, m, 3 * k - 1)
    return g_in, gp[..., :k], gp[..., k:2 * k], gp[..., 2 * k:]


def run(name, backend, point, uw, uh, ud, upstream=None, settings=SETTINGS, as_given=False):
    """Outputs of kernel ``name`` on fresh buffers: (y, ld) for a pass, (g_in, guw, guh, gud) for a backward.

    ``backend="numba"`` runs the compiled scalar math, which has no ``inverse_backward`` (the engine
    differentiates the density direction only).
    """
    if backend == "numba":
        assert name != "inverse_backward", "the compiled scalar math has no inverse_backward"
        return run_compiled(name, point, uw, uh, ud, upstream, settings)
    fn = getattr(spline, f"rqs_{name}_{backend}")
    kw = {"parameterization": settings[4]} if len(settings) > 4 else {}
    if upstream is None:
        out = (np.empty_like(point), np.empty_like(point))
        fn(point, uw, uh, ud, *settings[:4], *out, **kw)
    else:
        out = (np.empty_like(point), np.empty(uw.shape, point.dtype), np.empty(uh.shape, point.dtype),
               np.empty(ud.shape, point.dtype))
        fn(point, uw, uh, ud, *settings[:4], *upstream, *out, **kw)
    return out


def all_kernels(backend, x, uw, uh, ud, gy, gld, as_given=False, settings=SETTINGS):
    y, ld = run("forward", backend, x, uw, uh, ud, as_given=as_given, settings=settings)
    found = {"forward": (y, ld),
             "inverse": run("inverse", backend, y, uw, uh, ud, as_given=as_given, settings=settings),
             "forward_backward": run("forward_backward", backend, x, uw, uh, ud, (gy, gld), as_given=as_given,
                                     settings=settings)}
    if backend == "numpy":
        found["inverse_backward"] = run("inverse_backward", backend, y, uw, uh, ud, (gy, gld), as_given=as_given,
                                        settings=settings)
    return found


def assert_close(got, want, dtype, what, rtol=None):
    rtol = rtol or (1e-12 if dtype == np.float64 else 1e-5)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------- compiled twins vs the reference
def either_side(got, name, point, uw, uh, ud, upstream, settings=SETTINGS):
    """Per element, the reference's backward at ``point`` or at a float neighbour, whichever ``got`` is closest to.

    The compiled twin computes its knots with fused multiply-adds (the backend's fastmath ``contract``),
    so a knot can sit one rounding away from the reference's: a point on a knot may then fall in the
    neighbouring bin, where y and ld agree (the spline is C1) but their gradients take the other side of
    the log-det's kink.
    """
    # a few ulps of y can be less than one of x (and vice versa): neighbours from 1 to 2^12 ulps away
    steps = [0.0] + [sign * 2.0 ** e for e in range(13) for sign in (-1.0, 1.0)]
    candidates = [run(name, "numpy", (point + step * np.spacing(point)).astype(point.dtype), uw, uh, ud, upstream,
                      settings) for step in steps]

    def error(c):
        err = np.abs(got[0] - c[0]) / (1 + np.abs(c[0]))
        for g, r in zip(got[1:], c[1:]):
            e = np.abs(g - r) / (1 + np.abs(r))
            err = np.maximum(err, e.max(axis=-1, initial=0.0) if e.ndim == 3 else e)   # a pass's ld: per element
        return err

    best = np.argmin(np.stack([error(c) for c in candidates]), axis=0)[None]
    return [np.take_along_axis(np.stack([c[i] for c in candidates]), best if out.ndim == 2 else best[..., None],
                               axis=0)[0]
            for i, out in enumerate(got)]


@PARAMETERIZATIONS
@pytest.mark.parametrize("layout", ["views", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_matches_numpy(dtype, layout, settings):
    rng = np.random.default_rng(0)
    uw, uh, ud = params(rng, 48, 3, 5, dtype, layout=layout)
    x = points(rng, knots(uw, uh, ud, settings)[0], dtype)
    gy, gld = (rng.standard_normal(x.shape).astype(dtype) for _ in range(2))
    ref, got = (all_kernels(b, x, uw, uh, ud, gy, gld, as_given=True, settings=settings) for b in ("numpy", "numba"))
    ref["forward_backward"] = either_side(got["forward_backward"], "forward_backward", x, uw, uh, ud, (gy, gld),
                                          settings)
    for name in got:
        for i, (a, b) in enumerate(zip(got[name], ref[name])):
            assert a.dtype == dtype
            # float32 gradients of steep splines carry the rounding of large terms that cancel, as
            # (gx - gld dld/dx) / (dy/dx) does where the slope is small: 1e-4 of the array's largest
            rtol = 1e-4 if dtype == np.float32 and "backward" in name else None
            assert_close(a, b, dtype, f"{name} output {i}", rtol=rtol)


@pytest.mark.parametrize("settings", [(2.0, 0.05, 0.02, 0.3), (2.0, 0.05, 0.02, 0.3, "bounded")],
                         ids=["softplus", "bounded"])
def test_numba_matches_numpy_other_settings(settings):
    rng = np.random.default_rng(1)
    uw, uh, ud = params(rng, 30, 2, 4, np.float64)
    x = points(rng, knots(uw, uh, ud, settings)[0], np.float64)
    gy, gld = (rng.standard_normal(x.shape) for _ in range(2))
    y = run("forward", "numpy", x, uw, uh, ud, settings=settings)[0]
    for name, point, upstream in (("forward", x, None), ("inverse", y, None), ("forward_backward", x, (gy, gld))):
        ref = run(name, "numpy", point, uw, uh, ud, upstream, settings=settings)
        got = run(name, "numba", point, uw, uh, ud, upstream, settings=settings)
        if upstream is not None:
            ref = either_side(got, name, point, uw, uh, ud, upstream, settings)
        for a, b in zip(got, ref):
            assert_close(a, b, np.float64, name)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_matches_numpy_other_layouts_and_sizes(dtype):
    """Contiguous and read-only parameters, one bin, an empty batch: each compiles its own specialization."""
    rng = np.random.default_rng(11)
    cases = []
    uw, uh, ud = params(rng, 20, 3, 4, dtype, layout="contiguous")
    cases.append(("contiguous", uw, uh, ud, points(rng, knots(uw, uh, ud)[0], dtype)))
    uw, uh, ud = (np.broadcast_to(p, (20,) + p.shape[1:]) for p in params(rng, 1, 3, 4, dtype))
    cases.append(("read-only", uw, uh, ud, points(rng, knots(uw, uh, ud)[0], dtype)))
    uw, uh, ud = params(rng, 20, 3, 1, dtype)
    cases.append(("one bin", uw, uh, ud, points(rng, knots(uw, uh, ud)[0], dtype)))
    uw, uh, ud = params(rng, 0, 3, 4, dtype)
    cases.append(("empty", uw, uh, ud, np.zeros((0, 3), dtype=dtype)))
    for what, uw, uh, ud, x in cases:
        gy, gld = (rng.standard_normal(x.shape).astype(dtype) for _ in range(2))
        ref, got = (all_kernels(b, x, uw, uh, ud, gy, gld, as_given=True) for b in ("numpy", "numba"))
        ref["forward_backward"] = either_side(got["forward_backward"], "forward_backward", x, uw, uh, ud, (gy, gld))
        for name in got:
            for i, (a, b) in enumerate(zip(got[name], ref[name])):
                rtol = 1e-4 if dtype == np.float32 and "backward" in name else None
                assert_close(a, b, dtype, f"{what}: {name} output {i}", rtol=rtol)


@PARAMETERIZATIONS
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_and_log_dets(dtype, settings):
    rng = np.random.default_rng(2)
    uw, uh, ud = params(rng, 40, 3, 6, dtype)
    x = points(rng, knots(uw, uh, ud, settings)[0], dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-4
    for backend in ("numpy", "numba"):
        y, ld = run("forward", backend, x, uw, uh, ud, settings=settings)
        x_back, ild = run("inverse", backend, y, uw, uh, ud, settings=settings)
        np.testing.assert_allclose(x_back, x, rtol=0, atol=tol * B * 10)
        np.testing.assert_allclose(ild, -ld, rtol=0, atol=tol * 100)
        outside = np.abs(x) > B
        assert np.array_equal(y[outside], x[outside]) and np.all(ld[outside] == 0)


# ---------------------------------------------------------------- knots, ends, identity, monotonicity
@PARAMETERIZATIONS
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_knots_map_exactly_onto_knots(dtype, settings):
    rng = np.random.default_rng(3)
    k = 5
    uw, uh, ud = params(rng, 1, 2 * (k + 1), k, dtype)
    uw, uh, ud = (np.repeat(p, k + 1, axis=0) for p in (uw, uh, ud))    # row q: every element on knot q
    x_on, y_on, d_on = (np.stack([a[q, :, q] for q in range(k + 1)]) for a in knots(uw, uh, ud, settings))
    assert np.all(x_on[0] == -B) and np.all(x_on[-1] == B) and np.all(y_on[0] == -B) and np.all(y_on[-1] == B)
    y, ld = run("forward", "numpy", x_on, uw, uh, ud, settings=settings)
    x, ild = run("inverse", "numpy", y_on, uw, uh, ud, settings=settings)
    assert np.array_equal(y, y_on) and np.array_equal(x, x_on)      # the reference: exactly
    tol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(ld, np.log(d_on), atol=tol)          # the slope at a knot is d_q from both sides
    np.testing.assert_allclose(ild, -np.log(d_on), atol=tol)
    # the compiled twin rounds its knots its own way: +-B exactly, interior knots to rounding
    y, _ = run("forward", "numba", x_on, uw, uh, ud, settings=settings)
    x, _ = run("inverse", "numba", y_on, uw, uh, ud, settings=settings)
    assert np.all(y[[0, -1]] == y_on[[0, -1]]) and np.all(x[[0, -1]] == x_on[[0, -1]])
    np.testing.assert_allclose(y, y_on, atol=8 * B * np.finfo(dtype).eps)
    np.testing.assert_allclose(x, x_on, atol=8 * B * np.finfo(dtype).eps)


@PARAMETERIZATIONS
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_zero_parameters_give_the_identity(dtype, settings):
    rng = np.random.default_rng(4)
    for k in (1, 2, 7):
        uw, uh, ud = (np.zeros((20, 3, size), dtype=dtype) for size in (k, k, k - 1))
        x = rng.uniform(-B - 1, B + 1, (20, 3)).astype(dtype)
        eps = float(np.finfo(dtype).eps)
        # one bin (an empty derivatives array) would compile its own specialization: the slow test's
        for backend in ("numpy", "numba") if k > 1 else ("numpy",):
            for name in ("forward", "inverse"):
                out, ld = run(name, backend, x, uw, uh, ud, settings=settings)
                np.testing.assert_allclose(out, x, rtol=0, atol=16 * B * eps)
                np.testing.assert_allclose(ld, 0.0, atol=16 * eps)


@PARAMETERIZATIONS
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_monotone_and_continuous(scale, settings):
    rng = np.random.default_rng(5)
    uw, uh, ud = params(rng, 1, 4, 8, np.float64, scale=scale)
    x = np.linspace(-B - 0.5, B + 0.5, 4001)
    rows = np.broadcast_to(x[:, None], (x.size, 4)).copy()
    uw, uh, ud = (np.broadcast_to(p, (x.size,) + p.shape[1:]) for p in (uw, uh, ud))
    for backend in ("numpy", "numba"):
        y, ld = run("forward", backend, rows, uw, uh, ud, settings=settings)
        assert np.all(np.diff(y, axis=0) > 0), "the spline must increase"
        # continuity across knots and +-B: steps bounded by the largest slope times the grid step
        assert np.all(np.diff(y, axis=0) <= np.exp(ld).max() * (x[1] - x[0]) * 1.01)
        x_back, _ = run("inverse", backend, y, uw, uh, ud, settings=settings)
        np.testing.assert_allclose(x_back, rows, atol=1e-11)


@pytest.mark.parametrize("settings, magnitude", [(SETTINGS, 20.0), (BOUNDED, 20.0), (BOUNDED, 1e30)],
                         ids=["softplus", "bounded", "bounded-saturated"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_extreme_parameters_stay_finite(dtype, settings, magnitude):
    rng = np.random.default_rng(6)
    uw, uh, ud = (rng.choice([-magnitude, magnitude], size).astype(dtype) + rng.uniform(-1, 1, size).astype(dtype)
                  for size in ((40, 3, 6), (40, 3, 6), (40, 3, 5)))
    x = points(rng, knots(uw, uh, ud, settings)[0], dtype)
    gy, gld = (rng.standard_normal(x.shape).astype(dtype) for _ in range(2))
    for backend in ("numpy", "numba"):
        with np.errstate(over="raise", divide="raise", invalid="raise"):   # not even in intermediates
            results = all_kernels(backend, x, uw, uh, ud, gy, gld, settings=settings)
        for name, outs in results.items():
            for out in outs:
                assert np.all(np.isfinite(out)), f"{backend} {name}"
        _, ld = results["forward"]
        x_back, _ = results["inverse"]
        # slopes from ~1e-6 to ~1e3: the inverse recovers x to the rounding of y carried back through the map
        noise = B * np.finfo(dtype).eps / np.exp(ld.astype(np.float64))
        # bounded: knot slopes up to 1 / min_derivative = 1e3 either way; where a bin's two end slopes differ that
        # much the inverse's root cancels a few more digits (as it does for softplus parameters of that size)
        factor = 64 if len(settings) == 4 else 1024
        assert np.all(np.abs(x_back - x) <= factor * noise), f"{backend}: round trip"


def test_non_finite_input_gives_nan_without_raising():
    rng = np.random.default_rng(7)
    uw, uh, ud = params(rng, 3, 2, 4, np.float64)
    x = np.array([[np.nan, 0.5], [np.inf, -np.inf], [0.1, np.nan]])
    for backend in ("numpy", "numba"):
        for name in ("forward", "inverse"):
            out, ld = run(name, backend, x, uw, uh, ud)
            assert np.isnan(out[0, 0]) and np.isnan(out[2, 1]) and np.isfinite(out[0, 1])


def test_empty_batch():
    uw, uh, ud = (np.zeros((0, 3, size)) for size in (4, 4, 3))
    x = np.zeros((0, 3))
    for backend in ("numpy",):   # the compiled twins: the slow test
        for name in KERNELS:
            upstream = (x, x) if "backward" in name else None
            assert all(o.shape[0] == 0 for o in run(name, backend, x, uw, uh, ud, upstream))


# ---------------------------------------------------------------- VJPs against finite differences
def _fd_case(settings=SETTINGS):
    rng = np.random.default_rng(8)
    uw, uh, ud = params(rng, 16, 2, 4, np.float64, layout="contiguous")
    x = points(rng, knots(uw, uh, ud, settings)[0], np.float64)
    xs = knots(uw, uh, ud, settings)[0]
    # central differences need the stencil inside one bin: move knot points a little into their bin
    x = np.where(np.any(np.abs(x[..., None] - xs) < 1e-3, axis=-1), x + 2e-3 * np.sign(-x + 1e-9), x)
    gy, gld = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    return x, (uw, uh, ud), gy, gld


@PARAMETERIZATIONS
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_vjps_match_finite_differences(direction, settings):
    x, (uw, uh, ud), gy, gld = _fd_case(settings)
    point = x if direction == "forward" else run("forward", "numpy", x, uw, uh, ud, settings=settings)[0]
    h = 1e-6

    def loss(p, ps):   # per element: gy * out + gld * ld
        out, ld = run(direction, "numpy", p, *ps, settings=settings)
        return gy * out + gld * ld

    grads = run(f"{direction}_backward", "numpy", point, uw, uh, ud, (gy, gld), settings=settings)
    fd_x = (loss(point + h, (uw, uh, ud)) - loss(point - h, (uw, uh, ud))) / (2 * h)
    np.testing.assert_allclose(grads[0], fd_x, rtol=1e-5, atol=1e-5 * np.abs(fd_x).max(), err_msg="input")
    for which, name in enumerate(("uw", "uh", "ud")):
        for q in range(grads[which + 1].shape[-1]):
            moved = []
            for sign in (1, -1):
                ps = [p.copy() for p in (uw, uh, ud)]
                ps[which][..., q] += sign * h     # every element's own entry q: elements are independent
                moved.append(loss(point, ps))
            fd = (moved[0] - moved[1]) / (2 * h)
            np.testing.assert_allclose(grads[which + 1][..., q], fd, rtol=1e-5, atol=1e-6 * max(1, np.abs(fd).max()),
                                       err_msg=f"{name}[{q}]")


def test_gradient_on_a_knot_is_that_of_the_bin_it_opens():
    """At x exactly on an interior knot (bin k's left end) the gradient is the right-sided derivative.

    The log-det has a kink there. The compiled twin's knot may sit a rounding away (see either_side):
    its gradient is then one of the two one-sided derivatives.
    """
    rng = np.random.default_rng(9)
    uw, uh, ud = params(rng, 6, 3, 5, np.float64, layout="contiguous")
    xs = knots(uw, uh, ud)[0]
    x = np.stack([xs[r, :, 1 + r % 4] for r in range(6)])     # row r on interior knot 1 + r % 4
    gy, gld = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    for direction in ("forward", "inverse"):
        point = x if direction == "forward" else run("forward", "numpy", x, uw, uh, ud)[0]
        h = 1e-6 * np.maximum(1, np.abs(point))

        def loss(p):
            out, ld = run(direction, "numpy", p, uw, uh, ud)
            return gy * out + gld * ld

        # second-order one-sided differences, each within one bin
        right, left = ((-3 * loss(point) + 4 * loss(point + sign * h) - loss(point + 2 * sign * h)) / (2 * sign * h)
                       for sign in (1.0, -1.0))

        def near(g, want):
            return np.abs(g - want) <= 1e-5 * (np.abs(want) + np.abs(right).max())

        g = run(f"{direction}_backward", "numpy", point, uw, uh, ud, (gy, gld))[0]
        assert np.all(near(g, right)), f"{direction}: {g} vs right-sided {right}"
        assert not np.all(near(g, left)), "the test needs kinks"
        if direction == "forward":     # the compiled scalar math differentiates the density direction only
            g = run(f"{direction}_backward", "numba", point, uw, uh, ud, (gy, gld))[0]
            assert np.all(near(g, right) | near(g, left)), f"{direction} (numba)"


# ---------------------------------------------------------------- the bijector
def test_bijector_matches_kernels_and_broadcasts():
    rng = np.random.default_rng(10)
    uw, uh, ud = (rng.standard_normal((2, 1, size)) for size in (4, 4, 3))
    b = nb.RationalQuadraticSpline(uw, uh, ud, bound=B)
    x = rng.uniform(-B - 1, B + 1, (5, 2, 3))
    y, ld = b.forward_and_log_det(x)
    full = (np.broadcast_to(p, (5, 2, 3, p.shape[-1])).reshape(30, 1, -1) for p in (uw, uh, ud))
    y_ref, ld_ref = run("forward", "numpy", x.reshape(30, 1), *full, settings=(B, 1e-3, 1e-3, 1e-3))
    np.testing.assert_array_equal(y, y_ref.reshape(x.shape))
    np.testing.assert_array_equal(ld, ld_ref.reshape(x.shape))
    gx, grads = b.forward_vjp(x, np.ones_like(y), np.ones_like(ld))
    assert gx.shape == x.shape and {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in b.params.items()}
    assert b._is_increasing() is True and b.bins == 4 and b.batch_shape == (2, 1)
    # a scalar input broadcasts against the parameters
    assert b.forward(0.5).shape == (2, 1)


def test_identity_constructor():
    b = nb.RationalQuadraticSpline.identity(6, (3,), bound=2.0, dtype=np.float32)
    assert b.dtype == np.float32 and b.params["unnormalized_derivatives"].shape == (3, 5)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(4, 3)
    y, ld = b.forward_and_log_det(x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(ld, 0.0, atol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: nb.RationalQuadraticSpline(np.zeros(4), np.zeros(3), np.zeros(3)),
     "with K = 4 bins (from unnormalized_widths (4,)), unnormalized_heights must end in K = 4"),
    (lambda: nb.RationalQuadraticSpline(np.zeros(4), np.zeros(4), np.zeros(4)),
     "unnormalized_derivatives in K - 1 = 3; got (4,) and (4,)"),
    (lambda: nb.RationalQuadraticSpline(np.zeros(0), np.zeros(0), np.zeros(0)),
     "unnormalized_widths must have at least one bin"),
    (lambda: nb.RationalQuadraticSpline(0.0, 0.0, 0.0), "the parameters need a trailing bins axis"),
    (lambda: nb.RationalQuadraticSpline(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(3)),
     "batch shapes (2,), (3,), () do not broadcast"),
    (lambda: nb.RationalQuadraticSpline.identity(4, bound=0.0), "bound must be a finite positive number; got 0.0"),
    (lambda: nb.RationalQuadraticSpline.identity(4, bound=-1.0), "bound must be a finite positive number"),
    (lambda: nb.RationalQuadraticSpline.identity(4, bound=np.nan), "bound must be a finite positive number"),
    (lambda: nb.RationalQuadraticSpline.identity(4, min_bin_width=0.25), "min_bin_width must lie in (0, 1/K)"),
    (lambda: nb.RationalQuadraticSpline.identity(4, min_bin_height=0.0), "min_bin_height must lie in (0, 1/K)"),
    (lambda: nb.RationalQuadraticSpline.identity(4, min_derivative=1.0), "min_derivative must lie in (0, 1)"),
    (lambda: nb.RationalQuadraticSpline.identity(0), "bins must be a positive int; got 0"),
    (lambda: nb.RationalQuadraticSpline.identity(4, parameterization="clipped"),
     "parameterization must be one of ('softplus', 'bounded'); got 'clipped'"),
    (lambda: nb.RationalQuadraticSpline(np.zeros(2), [0.0, np.nan], np.zeros(1)),
     "unnormalized_heights must be finite; got nan at index 1"),
])
def test_bijector_validation(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_bijector_refuses_bad_inputs_and_parameters():
    b = nb.RationalQuadraticSpline.identity(4, (3,), dtype=np.float32)
    with pytest.raises(TypeError, match=r"RationalQuadraticSpline\.forward: x has dtype float64 but this object "
                                        r"computes in float32"):
        b.forward(np.zeros(3))
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64"):
        nb.RationalQuadraticSpline.identity(4, dtype=np.int32)
    with pytest.raises(ValueError, match=re.escape("RationalQuadraticSpline.inverse: y of shape (2, 4) does not "
                                                   "broadcast against the parameters' batch shape (3,)")):
        b.inverse(np.zeros((2, 4), dtype=np.float32))
    b.params["unnormalized_derivatives"][1, 2] = np.nan   # as a diverged optimizer step would leave it
    with pytest.raises(ValueError, match=re.escape("RationalQuadraticSpline.forward_vjp: parameter "
                                                   "unnormalized_derivatives must be finite; got nan at index (1, 2)")):
        b.forward_vjp(np.zeros(3, dtype=np.float32))


# ---------------------------------------------------------------- the bounded parameterization
def test_bounded_parameterization_follows_its_formulas():
    """W = softmax(softclip(uw, c_w)), d_k = exp(softclip(ud, c_d)); slopes in (md, 1/md), bins above md/(md+K-1)."""
    rng = np.random.default_rng(12)
    k, md = 6, 1e-3
    uw, uh, ud = (rng.choice([-1.0, 1.0], (30, 2, n)) * 10.0 ** rng.uniform(-2, 8, (30, 2, n)) for n in (k, k, k - 1))
    c_d = -np.log(md)
    c_w = c_d / 2
    xs, ys, d = knots(uw, uh, ud, (B, 1e-3, 1e-3, md, "bounded"))
    for u, edges in ((uw, xs), (uh, ys)):
        v = u / (1 + np.abs(u) / c_w)
        assert np.all(np.abs(v) < c_w)
        w = np.exp(v) / np.exp(v).sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(np.diff(edges, axis=-1), 2 * B * w, rtol=1e-12, atol=1e-15)
        assert np.all(np.diff(edges, axis=-1) > 2 * B * md / (md + k - 1) * (1 - 1e-12))
    np.testing.assert_allclose(d[..., 1:-1], np.exp(ud / (1 + np.abs(ud) / c_d)), rtol=1e-12)
    assert np.all(d[..., [0, -1]] == 1) and np.all((d > md) & (d < 1 / md))
    # the clip saturates: the largest parameters give (nearly) the extreme slopes
    big = np.abs(ud) > 1e6
    np.testing.assert_allclose(np.log(d[..., 1:-1][big]), np.sign(ud[big]) * c_d, rtol=1e-5)


def test_bounded_numba_matches_numpy_where_the_clip_saturates():
    """Parameters from 0.01 to 1e30 in size, both signs: the compiled twin against the reference, gradients too.

    Saturated clips make bins down to ~md / K of 2B with slopes up to ~1e4 in them (or 1e-4 the other way), so a
    knot a rounding away moves y (and x in the inverse) by that factor times its rounding: float64, with the
    passes too held to the reference at the point or a float neighbour, to 1e-9. (Float32 at such slopes keeps
    few digits; test_extreme_parameters_stay_finite checks it stays finite and inverts.)
    """
    dtype = np.float64
    rng = np.random.default_rng(13)
    net = rng.choice([-1.0, 1.0], (40, 3, 14)) * 10.0 ** rng.choice([-2.0, 0.0, 0.5, 1.0, 2.0, 6.0, 30.0], (40, 3, 14))
    uw, uh, ud = as_views(net[..., :5], net[..., 5:10], net[..., 10:])
    x = points(rng, knots(uw, uh, ud, BOUNDED)[0], dtype)
    gy, gld = (rng.standard_normal(x.shape).astype(dtype) for _ in range(2))
    ref, got = (all_kernels(b, x, uw, uh, ud, gy, gld, settings=BOUNDED) for b in ("numpy", "numba"))
    y = ref["forward"][0]
    for name, point, upstream in (("forward", x, None), ("inverse", y, None), ("forward_backward", x, (gy, gld))):
        ref[name] = either_side(got[name], name, point, uw, uh, ud, upstream, BOUNDED)
    for name in got:
        for i, (a, b) in enumerate(zip(got[name], ref[name])):
            assert np.all(np.isfinite(a)), f"{name} output {i}"
            assert_close(a, b, dtype, f"{name} output {i}", rtol=1e-9)
    # saturated parameters get (nearly) no gradient
    for g, u in zip(ref["forward_backward"][1:], (uw, uh, ud)):
        assert np.all(np.abs(g[np.abs(u) > 1e20]) < 1e-20)


def test_bounded_bijector_matches_kernels_and_is_the_identity_at_zero():
    rng = np.random.default_rng(14)
    uw, uh, ud = (rng.standard_normal((2, 1, size)) * 3 for size in (4, 4, 3))
    b = nb.RationalQuadraticSpline(uw, uh, ud, bound=B, parameterization="bounded")
    x = rng.uniform(-B - 1, B + 1, (5, 2, 3))
    y, ld = b.forward_and_log_det(x)
    full = (np.broadcast_to(p, (5, 2, 3, p.shape[-1])).reshape(30, 1, -1) for p in (uw, uh, ud))
    y_ref, ld_ref = run("forward", "numpy", x.reshape(30, 1), *full, settings=BOUNDED)
    np.testing.assert_array_equal(y, y_ref.reshape(x.shape))
    np.testing.assert_array_equal(ld, ld_ref.reshape(x.shape))
    softplus = nb.RationalQuadraticSpline(uw, uh, ud, bound=B)
    assert not np.allclose(softplus.forward(x), y)
    z = nb.RationalQuadraticSpline.identity(5, (3,), parameterization="bounded", dtype=np.float32)
    xz = np.linspace(-6, 6, 12, dtype=np.float32).reshape(4, 3)
    yz, ldz = z.forward_and_log_det(xz)
    np.testing.assert_allclose(yz, xz, atol=1e-5)
    np.testing.assert_allclose(ldz, 0.0, atol=1e-6)
    assert z.parameterization == "bounded"


def test_every_spline_layer_refuses_an_unknown_parameterization():
    from nflow_np import flows
    from nflow_np.bijectors.transforms import SplineTransform
    makes = [lambda: flows.NSF(2, parameterization="softplus2"),
             lambda: flows.NSF(2, autoregressive=True, parameterization=None),
             lambda: nb.SplineCoupling([True, False], parameterization="Bounded"),
             lambda: nb.SplineAutoregressive(2, parameterization=1),
             lambda: SplineTransform(parameterization="exp")]
    for make in makes:
        with pytest.raises(ValueError, match=re.escape("parameterization must be one of ('softplus', 'bounded')")):
            make()
