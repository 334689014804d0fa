"""Property tests: every registered bijector, random parameters, batch shapes and dtypes.

Hypothesis draws a seed (which fixes the bijector's parameters and the points),
a batch shape of 0 to 2 axes of sizes 1 to 4 and a dtype; each test then holds
the bijector to one promise of the protocol at those points:

- round trips ``inverse(forward(x)) == x`` and ``forward(inverse(y)) == y``;
- ``inverse_log_det_jacobian(forward(x)) == -forward_log_det_jacobian(x)``;
- fused passes equal unfused ones;
- shapes and dtypes of every result, ``event_ndims`` reductions included;
- the VJPs: shapes, dtypes and names of their gradients, the ``event_ndims``
  reduction of the log-det gradient, and the duality of the two directions.

Elementwise cases keep the registry's trailing axis of width 3 (their
parameters may have that shape) after the batch axes, or, when every parameter
is a scalar, may drop it (scalar inputs included); vector cases have shape
``batch + (d,)``.

Points come from the registry's ``points()``, whose first two rows hold the
edge values (tails a dtype can barely resolve); they are dropped here, as the
edges are ``test_bijectors.py``'s business. Round-trip and log-det comparisons
still allow for the conditioning of the map at each point: the rounding of
``y`` carried back through the inverse, estimated from a float64
finite-difference Jacobian of a float64 twin of the bijector (same
parameters), independently of the bijector's own log-det. An ``Affine`` with a
low-rank update inverts through the Woodbury identity, whose error follows the
conditioning of its triangular part rather than of the whole matrix; that is
allowed for here and held to the stronger promise on a fixed example below.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nflow_np.bijectors as nb
from bijector_cases import CASES
from nflow_np.distributions import MultivariateNormalDiag, Normal

NAMES = sorted(CASES)
DTYPES = [np.float64, np.float32]

SETTINGS = dict(max_examples=15, deadline=None, database=None)

seeds = st.integers(0, 2**32 - 1)
batch_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
dtypes = st.sampled_from(DTYPES)

# The rounding-noise estimate is first order; allow this many times it (as nflow_np.testing does).
NOISE_FACTOR = 16.0
# Round-off budget, in units of the dtype's eps, for results computed by a few operations.
ULPS = 64.0


def _eps(dtype):
    return float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------- setup
def _scalar_params_only(bijector):
    return all(np.ndim(p) == 0 for _, p in bijector.parameters())


def _setup(name, seed, batch, dtype, drop_width=False):
    """A bijector of case ``name`` and bulk points of shape ``batch + event``.

    Elementwise cases keep their trailing axis of width 3 (their parameters
    have shape (3,) or ()), unless ``drop_width`` and every parameter is a
    scalar: then the points have shape ``batch`` exactly (scalars included).
    """
    case = CASES[name]
    rng = np.random.default_rng(seed)
    try:
        bijector = case.build(rng, dtype)
    except ValueError as exc:
        # the registry's Sigmoid(low, high) draws low ~ N(-1, 1) and high ~ N(3, 0.1): about one seed
        # in 10^4 gives low > high, which the constructor rightly refuses
        assume("high must exceed low" not in str(exc))
        raise
    n = int(np.prod(batch, dtype=np.int64))
    if case.dim:
        rows = case.draw(bijector, rng, dtype, n + 2)[2:]
        x = rows.reshape(batch + (case.dim,))
    elif drop_width and _scalar_params_only(bijector):
        rows = case.draw(bijector, rng, dtype, -(-n // 3) + 2)[2:]
        x = rows.reshape(-1)[:n].reshape(batch)
    else:
        rows = case.draw(bijector, rng, dtype, n + 2)[2:]
        x = rows.reshape(batch + rows.shape[1:])
    assert x.dtype == dtype
    if np.dtype(dtype) == np.float32:
        # The registry's bulk points are unbounded normals: now and then one lies where float32 rounds
        # the map onto the edge of its range (NormalCDF(x) == 1.0 for x > 5.3), which the inverse
        # rightly refuses. Such points are the edges' business, not this file's.
        try:
            bijector.inverse(bijector.forward(x))
        except ValueError as exc:
            assume("must lie in" not in str(exc))
            raise
    return case, bijector, np.ascontiguousarray(x)


def _float64_twin(name, seed, bijector):
    """The same case built in float64, with the parameters of ``bijector`` copied in exactly."""
    twin = CASES[name].build(np.random.default_rng(seed), np.float64)
    pairs = list(zip(twin.parameters(), bijector.parameters()))
    assert [a for (a, _), _ in pairs] == [b for _, (b, _) in pairs]
    for (_, mine), (_, theirs) in pairs:
        mine[...] = theirs
    return twin


def _jacobian64(twin, x64):
    """Float64 central-difference Jacobian: per element (event_ndims 0) or batch + (d, d)."""
    h = 1e-6 * np.maximum(1.0, np.abs(x64))
    if twin.event_ndims == 0:
        return (twin.forward(x64 + h) - twin.forward(x64 - h)) / (2 * h)
    assert twin.event_ndims == 1
    d = x64.shape[-1]
    cols = []
    for j in range(d):
        step = np.zeros_like(x64)
        step[..., j] = h[..., j]
        cols.append((twin.forward(x64 + step) - twin.forward(x64 - step)) / (2 * h[..., j:j + 1]))
    return np.stack(cols, axis=-1)   # [..., i, j] = dy_i / dx_j


def _log_det_gradient64(twin, x64):
    """Float64 central-difference gradient of the forward log-det with respect to x (shape of x)."""
    h = 1e-6 * np.maximum(1.0, np.abs(x64))
    if twin.event_ndims == 0:
        return (twin.forward_log_det_jacobian(x64 + h) - twin.forward_log_det_jacobian(x64 - h)) / (2 * h)
    grads = []
    for j in range(x64.shape[-1]):
        step = np.zeros_like(x64)
        step[..., j] = h[..., j]
        grads.append((twin.forward_log_det_jacobian(x64 + step) - twin.forward_log_det_jacobian(x64 - step))
                     / (2 * h[..., j]))
    return np.stack(grads, axis=-1)


def _is_low_rank_affine(bijector):
    return type(bijector).__name__ == "Affine" and "scale_perturb_factor" in bijector.params


def _woodbury_noise(twin, vec, dtype, *, transpose=False):
    """Rounding noise of an Affine solve through the Woodbury identity, in float64.

    ``S^-1 r = w - U C^-1 diag(d) V^T w`` with ``w = A^-1 r``, ``U = A^-1 V`` (and likewise
    ``S^-T r`` with ``A^-T``): its error grows with the conditioning of ``A`` and ``C``, not of
    ``S`` (which is what the generic noise estimates assume):
    ``eps (|A^-1| |r| + |U| |C^-1| |d| |V|^T |A^-1| |r|)``. The stronger promise, a solve as accurate
    as S's conditioning allows (the solve refines once), is test_affine_inverse_accuracy_does_not_depend_on_a.
    """
    p = {key: value.astype(np.float64) for key, value in twin.params.items()}
    size = p["scale_perturb_factor"].shape[0]
    a = np.tril(p["scale_tril"]) if "scale_tril" in p else np.zeros((size, size))
    a = a + np.diag(p.get("scale_diag", np.zeros(size) if "scale_tril" in p else np.ones(size)))
    v = p["scale_perturb_factor"]
    d = p.get("scale_perturb_diag", np.ones(v.shape[1]))
    a_inv = np.linalg.inv(a)
    u = a_inv @ v
    c_inv = np.linalg.inv(np.eye(v.shape[1]) + d[:, None] * (v.T @ u))
    correction = np.abs(u) @ np.abs(c_inv) @ (np.abs(d)[:, None] * np.abs(v).T)    # (D, D)
    r = np.abs(np.asarray(vec, dtype=np.float64))
    if transpose:   # rows: r @ A^-1, then the correction r @ U C^-1 d V^T A^-1
        w = r @ np.abs(a_inv)
        return _eps(dtype) * (w + (r @ correction) @ np.abs(a_inv))
    w = r @ np.abs(a_inv).T   # rows: (A^-1 r)^T
    return _eps(dtype) * (w + w @ correction.T)


def _rounding_noise(twin, x, y):
    """First-order rounding noise of the two round trips at ``x`` (``y = forward(x)``), in float64.

    ``noise_x``: |J^-1| |y| eps, the rounding of y carried back through the inverse;
    ``noise_y``: |J| noise_x + (|J| |x| + |y|) eps: the inverse's allowed error carried forward, the
    rounding of x carried forward and y's own.
    """
    eps = _eps(x.dtype)
    x64, ay, ax = x.astype(np.float64), np.abs(y.astype(np.float64)), np.abs(x.astype(np.float64))
    jac = _jacobian64(twin, x64)
    if twin.event_ndims == 0:
        noise_x = eps * ay / np.abs(jac)
        return noise_x, np.abs(jac) * noise_x + eps * (np.abs(jac) * ax + ay)
    jac_inv = np.linalg.inv(jac)
    noise_x = eps * np.einsum("...ij,...j->...i", np.abs(jac_inv), ay)
    if _is_low_rank_affine(twin):
        noise_x = np.maximum(noise_x, _woodbury_noise(twin, y - twin.params.get("shift", 0.0), x.dtype))
    noise_y = np.einsum("...ij,...j->...i", np.abs(jac), noise_x + eps * ax) + eps * ay
    return noise_x, noise_y


def assert_close(actual, expected, *, rtol, atol, noise=0.0, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a64, e64 = actual.astype(np.float64), expected.astype(np.float64)
    assert np.all(np.isfinite(a64)), f"{what}: non-finite values {a64}"
    err = np.abs(a64 - e64)
    tol = atol + rtol * np.abs(e64) + NOISE_FACTOR * np.asarray(noise, dtype=np.float64)
    if err.size and np.any(err > tol):
        i = np.unravel_index(int(np.argmax(err - tol)), err.shape)
        raise AssertionError(f"{what}: at index {i} got {a64[i]!r}, expected {e64[i]!r} "
                             f"(|error| {err[i]:.3g} > tolerance {tol[i]:.3g})")


def _tolerances(dtype):
    eps = _eps(dtype)
    return dict(rtol=ULPS * eps, atol=ULPS * eps)


# ---------------------------------------------------------------------------- the bijector protocol
@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, drop_width=st.booleans())
def test_round_trips(name, seed, batch, dtype, drop_width):
    _, b, x = _setup(name, seed, batch, dtype, drop_width)
    y = b.forward(x)
    x_back = b.inverse(y)
    y_again = b.forward(x_back)
    noise_x, noise_y = _rounding_noise(_float64_twin(name, seed, b), x, y)
    tol = _tolerances(dtype)
    assert_close(x_back, x, noise=noise_x, what=f"{name}: inverse(forward(x)) == x", **tol)
    assert_close(y_again, y, noise=noise_y, what=f"{name}: forward(inverse(y)) == y", **tol)


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, drop_width=st.booleans())
def test_inverse_log_det_is_minus_forward_log_det(name, seed, batch, dtype, drop_width):
    _, b, x = _setup(name, seed, batch, dtype, drop_width)
    y = b.forward(x)
    fldj = b.forward_log_det_jacobian(x)
    ildj = b.inverse_log_det_jacobian(y)
    # ildj is evaluated at the rounded y, i.e. at an x moved by up to noise_x: allow the log-det's change over that
    twin = _float64_twin(name, seed, b)
    noise_x, _ = _rounding_noise(twin, x, y)
    shift = np.abs(_log_det_gradient64(twin, x.astype(np.float64))) * noise_x
    if b.event_ndims:
        shift = shift.sum(axis=-1)
    # log-dets are sums of a few terms of size ~|x|: an absolute round-off budget of that size
    terms = 1.0 + np.abs(x.astype(np.float64))
    if b.event_ndims:
        terms = terms.sum(axis=-1)
    tol = _tolerances(dtype)
    assert_close(ildj, -fldj, rtol=tol["rtol"], atol=0.0, noise=shift + _eps(dtype) * terms,
                 what=f"{name}: inverse_log_det_jacobian(forward(x)) == -forward_log_det_jacobian(x)")


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, drop_width=st.booleans())
def test_fused_equals_unfused(name, seed, batch, dtype, drop_width):
    _, b, x = _setup(name, seed, batch, dtype, drop_width)
    tight = dict(rtol=8 * _eps(dtype), atol=8 * _eps(dtype))
    y, fldj = b.forward_and_log_det(x)
    assert_close(y, b.forward(x), what=f"{name}: forward_and_log_det[0] == forward", **tight)
    assert_close(fldj, b.forward_log_det_jacobian(x),
                 what=f"{name}: forward_and_log_det[1] == forward_log_det_jacobian", **tight)
    x_back, ildj = b.inverse_and_log_det(y)
    assert_close(x_back, b.inverse(y), what=f"{name}: inverse_and_log_det[0] == inverse", **tight)
    assert_close(ildj, b.inverse_log_det_jacobian(y),
                 what=f"{name}: inverse_and_log_det[1] == inverse_log_det_jacobian", **tight)


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, drop_width=st.booleans())
def test_shapes_and_dtypes(name, seed, batch, dtype, drop_width):
    _, b, x = _setup(name, seed, batch, dtype, drop_width)
    k = b.event_ndims
    log_det_shape = x.shape[:x.ndim - k]

    y = b.forward(x)
    assert (y.shape, y.dtype) == (x.shape, x.dtype), "forward must keep the shape and dtype"
    x_back = b.inverse(y)
    assert (x_back.shape, x_back.dtype) == (x.shape, x.dtype), "inverse must keep the shape and dtype"

    results = {
        "forward_log_det_jacobian": (b.forward_log_det_jacobian(x),
                                     lambda en: b.forward_log_det_jacobian(x, event_ndims=en)),
        "inverse_log_det_jacobian": (b.inverse_log_det_jacobian(y),
                                     lambda en: b.inverse_log_det_jacobian(y, event_ndims=en)),
        "forward_and_log_det": (b.forward_and_log_det(x)[1],
                                lambda en: b.forward_and_log_det(x, event_ndims=en)[1]),
        "inverse_and_log_det": (b.inverse_and_log_det(y)[1],
                                lambda en: b.inverse_and_log_det(y, event_ndims=en)[1]),
    }
    for method, (log_det, at_rank) in results.items():
        assert log_det.shape == log_det_shape, f"{method}: shape {log_det.shape}, expected {log_det_shape}"
        assert log_det.dtype == dtype, f"{method}: dtype {log_det.dtype} for {np.dtype(dtype)} input"
        explicit = at_rank(k)
        assert explicit.shape == log_det_shape and explicit.dtype == dtype
        np.testing.assert_array_equal(explicit, log_det, err_msg=f"{method}: event_ndims={k} is the default")
        if x.ndim > k:
            # one more event axis sums the last batch axis
            summed = at_rank(k + 1)
            assert summed.shape == log_det_shape[:-1], f"{method}(event_ndims={k + 1}): shape {summed.shape}"
            assert summed.dtype == dtype
            assert_close(summed, log_det.astype(np.float64).sum(axis=-1),
                         rtol=ULPS * _eps(dtype), atol=ULPS * _eps(dtype) * (1 + np.abs(log_det).sum()),
                         what=f"{method}(event_ndims={k + 1}) == sum of the last axis")
        if x.ndim >= k:
            # the whole input as one event
            total = at_rank(x.ndim)
            assert total.shape == () and total.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, drop_width=st.booleans())
def test_vjp_shapes_dtypes_and_names(name, seed, batch, dtype, drop_width):
    _, b, x = _setup(name, seed, batch, dtype, drop_width)
    rng = np.random.default_rng(seed ^ 0x5EED)
    params = dict(b.parameters())
    y, ld = b.forward_and_log_det(x)
    for method, point, out in (("forward_vjp", x, y), ("inverse_vjp", y, x)):
        vjp = getattr(b, method)
        grad_out = rng.standard_normal(out.shape).astype(dtype)
        grad_ld = rng.standard_normal(ld.shape).astype(dtype)
        for upstream in ((grad_out, grad_ld), (grad_out, None), (None, grad_ld), (None, None)):
            grad_in, grads = vjp(point, *upstream)
            assert isinstance(grad_in, np.ndarray)
            assert grad_in.shape == point.shape, f"{method}: input gradient shape {grad_in.shape}"
            assert grad_in.dtype == dtype, f"{method}: input gradient dtype {grad_in.dtype}"
            assert set(grads) == set(params), f"{method}: gradients for {sorted(grads)}; params {sorted(params)}"
            for key, g in grads.items():
                assert np.shape(g) == params[key].shape, f"{method}: gradient of {key} has shape {np.shape(g)}"
                assert np.asarray(g).dtype == params[key].dtype, f"{method}: gradient of {key} dtype"
                assert np.all(np.isfinite(g))
            assert np.all(np.isfinite(grad_in))
        zero_in, zero_grads = vjp(point)
        np.testing.assert_array_equal(zero_in, 0.0, err_msg=f"{method}: no upstream gradient, zero gradient")
        for key, g in zero_grads.items():
            np.testing.assert_array_equal(g, 0.0, err_msg=f"{method}: zero upstream, zero gradient of {key}")


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes.filter(lambda s: len(s) >= 1), dtype=dtypes)
def test_vjp_event_ndims_reduction(name, seed, batch, dtype):
    _check_vjp_event_ndims_reduction(name, seed, batch, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_vjp_event_ndims_reduction_fixed_examples(name):
    # Batches of several events, where a log-det gradient left at shape batch + (1,) instead of
    # spread over the reduced axis would be counted once instead of once per event (as Affine and
    # ScaleMatvecTriL, which sum it, did before fd877be).
    for seed, batch, dtype in ((0, (3,), np.float64), (1, (2, 4), np.float64), (2, (4,), np.float32)):
        _check_vjp_event_ndims_reduction(name, seed, batch, dtype)


def _check_vjp_event_ndims_reduction(name, seed, batch, dtype):
    """With one more event axis, the log-det gradient (one value per reduced event) is spread over the axis."""
    _, b, x = _setup(name, seed, batch, dtype)
    k = b.event_ndims
    rng = np.random.default_rng(seed ^ 0xE7E)
    y, ld = b.forward_and_log_det(x)
    tol = dict(rtol=ULPS * _eps(dtype), atol=ULPS * _eps(dtype))
    for method, point, out in (("forward_vjp", x, y), ("inverse_vjp", y, x)):
        vjp = getattr(b, method)
        grad_out = rng.standard_normal(out.shape).astype(dtype)
        reduced = rng.standard_normal(ld.shape[:-1]).astype(dtype)
        grad_in, grads = vjp(point, grad_out, reduced, event_ndims=k + 1)
        assert grad_in.shape == point.shape and grad_in.dtype == dtype
        spread = np.ascontiguousarray(np.broadcast_to(reduced[..., None], ld.shape))
        want_in, want = vjp(point, grad_out, spread, event_ndims=k)
        scale = 1.0 + float(np.abs(want_in).max(initial=0.0))
        assert_close(grad_in, want_in, rtol=tol["rtol"], atol=tol["atol"] * scale,
                     what=f"{name}: {method}(event_ndims={k + 1}) input gradient")
        assert set(grads) == set(want)
        for key in want:
            scale = 1.0 + float(np.abs(want[key]).max(initial=0.0))
            assert_close(grads[key], want[key], rtol=tol["rtol"], atol=tol["atol"] * scale,
                         what=f"{name}: {method}(event_ndims={k + 1}) gradient of {key}")


@pytest.mark.parametrize("name", NAMES)
@settings(**SETTINGS)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes)
def test_vjp_duality(name, seed, batch, dtype):
    """The inverse VJP undoes the forward VJP.

    With x = f^-1(y) and inverse log-det -g(x): ``inverse_vjp(y, u, c) = (w, P)``
    has ``w = J^-T (u - c dg/dx)``, so ``forward_vjp(x, w, c)`` returns
    ``J^T w + c dg/dx = u``, and its parameter gradients are ``-P``.
    """
    _, b, x = _setup(name, seed, batch, dtype)
    rng = np.random.default_rng(seed ^ 0xD0A1)
    y = b.forward(x)
    x_back, ild = b.inverse_and_log_det(y)
    u = rng.standard_normal(x.shape).astype(dtype)
    c = rng.standard_normal(ild.shape).astype(dtype)
    w, inverse_grads = b.inverse_vjp(y, u, c)
    u_again, forward_grads = b.forward_vjp(x_back, w, c)
    # w = J^-T r with r = u - c dg/dx, solved with error ~ eps |J^-T| |r|; then u = J^T w + c dg/dx
    # adds |J^T| times that and the rounding of the products (J and dg/dx from float64 finite
    # differences of a float64 twin)
    twin = _float64_twin(name, seed, b)
    x64 = x_back.astype(np.float64)
    eps = _eps(dtype)
    c_full = c.astype(np.float64).reshape(c.shape + (1,) * b.event_ndims)
    r = np.abs(u.astype(np.float64)) + np.abs(c_full * _log_det_gradient64(twin, x64))
    jac = _jacobian64(twin, x64)
    w_abs = np.abs(w.astype(np.float64))
    if b.event_ndims == 0:
        noise = eps * (2 * r + np.abs(jac) * w_abs)
    else:
        jac_abs = np.abs(jac)
        noise_w = eps * np.einsum("...ji,...j->...i", np.abs(np.linalg.inv(jac)), r)
        if _is_low_rank_affine(twin):
            noise_w = np.maximum(noise_w, _woodbury_noise(twin, r, dtype, transpose=True))
        noise = np.einsum("...ji,...j->...i", jac_abs, noise_w + eps * w_abs) + eps * r
    tol = NOISE_FACTOR * noise + ULPS * eps * r
    # an Inline bijector without VJP functions takes its gradients by finite differences
    fd = name.startswith("Inline") or name == "Chain(seed000)"
    cond = 1.0 if b.event_ndims == 0 else np.linalg.cond(jac)[..., None]
    if fd:
        r_event = r if b.event_ndims == 0 else r.max(axis=-1, keepdims=True)
        tol = tol + (1e-6 if dtype == np.float64 else 2e-2) * cond * r_event
    assert_close(u_again, u, rtol=0.0, atol=tol, what=f"{name}: forward_vjp(x, inverse_vjp(y, u, c), c) == u")
    assert set(forward_grads) == set(inverse_grads)
    for key in inverse_grads:
        g_inv = np.asarray(inverse_grads[key], dtype=np.float64)
        g_fwd = np.asarray(forward_grads[key], dtype=np.float64)
        # a sum over the batch of terms in w and c
        scale = float(np.abs(g_inv).max(initial=0.0)) + float(np.abs(w).sum() + np.abs(c).sum())
        rtol = (1e-6 if dtype == np.float64 else 2e-2) if fd else ULPS * eps
        assert_close(-g_fwd, g_inv, rtol=0.0, atol=rtol * float(np.max(cond)) * scale,
                     what=f"{name}: parameter gradient of {key}: inverse_vjp == -forward_vjp")


@pytest.mark.skipif(not hasattr(nb, "Affine"), reason="Affine not available yet")
def test_affine_inverse_accuracy_does_not_depend_on_a():
    """A well-conditioned S inverts to rounding accuracy, however ill-conditioned its part A is."""
    # A = diag(1, 1e-8), V = e_2, d = 1: S = diag(1, 1 + 1e-8), condition number 1
    b = nb.Affine(scale_diag=np.array([1.0, 1e-8]), scale_perturb_factor=np.array([[0.0], [1.0]]))
    s = np.diag([1.0, 1.0 + 1e-8])
    y = np.array([[0.3, -0.7], [1.5, 2.0], [-1.0, 0.125]])
    g = np.array([[1.0, -2.0], [0.5, 0.25], [-0.75, 1.0]])
    tol = dict(rtol=ULPS * _eps(np.float64), atol=ULPS * _eps(np.float64))
    assert_close(b.inverse(y), np.linalg.solve(s, y.T).T, what="Affine.inverse", **tol)
    assert_close(b.inverse(b.forward(y)), y, what="Affine: inverse(forward(x)) == x", **tol)
    grad_y, _ = b.inverse_vjp(y, g)
    assert_close(grad_y, np.linalg.solve(s.T, g.T).T, what="Affine.inverse_vjp input gradient", **tol)


# ---------------------------------------------------------------------------- base distributions
def _param_array(rng, shape, dtype, *, positive=False):
    v = rng.uniform(0.5, 2.0, size=shape) if positive else rng.normal(size=shape)
    return np.asarray(v, dtype=dtype)


@settings(max_examples=40, deadline=None, database=None)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, n=st.integers(0, 5),
       loc_full=st.booleans(), scale_full=st.booleans())
def test_normal_sample_and_log_prob(seed, batch, dtype, n, loc_full, scale_full):
    rng = np.random.default_rng(seed)
    loc = _param_array(rng, batch if loc_full else (), dtype)
    scale = _param_array(rng, batch if scale_full else batch[len(batch) // 2:], dtype, positive=True)
    dist = Normal(loc, scale)
    want_batch = np.broadcast_shapes(loc.shape, scale.shape)
    assert dist.dtype == dtype and dist.batch_shape == want_batch and dist.event_shape == ()

    sample_seed = seed % 1000
    s = dist.sample(n, rng=sample_seed)
    assert s.shape == (n,) + want_batch and s.dtype == dtype
    np.testing.assert_array_equal(dist.sample(n, rng=sample_seed), s, err_msg="same seed, same samples")
    np.testing.assert_array_equal(dist.sample(n, rng=np.random.default_rng(sample_seed)), s)
    if s.size:
        assert not np.array_equal(dist.sample(n, rng=sample_seed + 1), s), "another seed, other samples"

    lp = dist.log_prob(s)
    assert lp.shape == (n,) + want_batch and lp.dtype == dtype
    z = (s.astype(np.float64) - loc) / scale.astype(np.float64)
    expected = -0.5 * z * z - np.log(scale.astype(np.float64)) - 0.5 * np.log(2 * np.pi)
    assert_close(lp, expected, rtol=ULPS * _eps(dtype), atol=ULPS * _eps(dtype) * (1 + np.abs(expected)),
                 what="Normal.log_prob")

    # one point per batch member, and one point for all of them
    assert dist.log_prob(np.zeros(want_batch, dtype=dtype)).shape == want_batch
    assert dist.log_prob(np.asarray(0.5, dtype=dtype)).shape == want_batch

    pair = dist.sample((n, 2), rng=sample_seed)
    assert pair.shape == (n, 2) + want_batch and pair.dtype == dtype
    assert dist.log_prob(pair).shape == (n, 2) + want_batch


@settings(max_examples=40, deadline=None, database=None)
@given(seed=seeds, batch=batch_shapes, dtype=dtypes, n=st.integers(0, 5), d=st.integers(1, 4),
       which=st.sampled_from(["loc", "scale_diag", "both", "both-shared-scale"]))
def test_multivariate_normal_diag_sample_and_log_prob(seed, batch, dtype, n, d, which):
    rng = np.random.default_rng(seed)
    loc = _param_array(rng, batch + (d,), dtype)
    scale = _param_array(rng, (d,) if which == "both-shared-scale" else batch + (d,), dtype, positive=True)
    if which == "loc":
        dist, scale = MultivariateNormalDiag(loc), np.ones((d,), dtype=dtype)
    elif which == "scale_diag":
        dist, loc = MultivariateNormalDiag(scale_diag=scale), np.zeros((d,), dtype=dtype)
    else:
        dist = MultivariateNormalDiag(loc, scale)
    want_batch = np.broadcast_shapes(loc.shape, scale.shape)[:-1]
    assert dist.dtype == dtype and dist.batch_shape == want_batch and dist.event_shape == (d,)

    sample_seed = seed % 1000
    s = dist.sample(n, rng=sample_seed)
    assert s.shape == (n,) + want_batch + (d,) and s.dtype == dtype
    np.testing.assert_array_equal(dist.sample(n, rng=sample_seed), s, err_msg="same seed, same samples")
    if s.size:
        assert not np.array_equal(dist.sample(n, rng=sample_seed + 1), s), "another seed, other samples"

    lp = dist.log_prob(s)
    assert lp.shape == (n,) + want_batch and lp.dtype == dtype
    z = (s.astype(np.float64) - loc) / scale.astype(np.float64)
    expected = (-0.5 * z * z - np.log(scale.astype(np.float64)) - 0.5 * np.log(2 * np.pi)).sum(axis=-1)
    assert_close(lp, expected, rtol=ULPS * _eps(dtype), atol=ULPS * _eps(dtype) * d * (1 + np.abs(expected)),
                 what="MultivariateNormalDiag.log_prob")
    assert dist.log_prob(np.zeros((d,), dtype=dtype)).shape == want_batch
    assert dist.log_prob(np.zeros((3, 1) + want_batch + (d,), dtype=dtype)).shape == (3, 1) + want_batch
