"""Bad input, drawn by hypothesis: a clear error naming the entry point, or a correct result.

Every public entry point below is fed arrays of odd shapes (wrong rank, wrong
event size, empty, one row), dtypes (float16/32/64, ints, bools, complex,
object, strings), byte orders, memory layouts (Fortran order, negative and
0-strides, non-contiguous slices, read-only) and extreme values (0, +-1e308,
subnormals, +-inf, NaN, huge ints). Each call must either raise ``ValueError``
or ``TypeError`` whose message names the entry point, or return a result of
the right shape and dtype with no NaN for finite input; inputs that differ from
a plain C-contiguous float64 array only in layout, byte order or a losslessly
convertible dtype must give that array's result, on every backend.
"""

import os
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import nflow_np
from nflow_np import bijectors as nb
from nflow_np import flows
from nflow_np.distributions import MultivariateNormalDiag, Normal
from nflow_np.kernels.backend import cuda_available
from nflow_np.testing import check_bijector
from nflow_np.train import fit

SETTINGS = dict(deadline=None, derandomize=True, database=None)
BACKENDS = ["numpy", "numba"]
D = 2

FLOWS = {
    "RealNVP": lambda **kw: flows.RealNVP(D, n_layers=2, hidden=(4,), rng=0, **kw),
    "MAF": lambda **kw: flows.MAF(D, n_layers=2, hidden=(4,), rng=0, **kw),
    "NSF": lambda **kw: flows.NSF(D, n_layers=2, bins=4, hidden=(4,), rng=0, **kw),
}
_BUILT = {}


def flow_named(name):
    if name not in _BUILT:
        _BUILT[name] = FLOWS[name]()
    return _BUILT[name]


def outcome(fn, *names):
    """``fn()``'s result, or None when it raised a clear error naming one of ``names``; anything else fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn()
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert any(name in message for name in names), f"{type(exc).__name__} not naming {names}: {message}"
        return None


# ---------------------------------------------------------------------------- strategies
def _plain(seed, n, d=D):
    return np.random.default_rng(seed).normal(size=(n, d))


# forms of a valid float64 array that hold the same numbers: the result must equal the plain array's
LAYOUTS = {
    "C": lambda x: x,
    "fortran": np.asfortranarray,
    "negative strides": lambda x: np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1],
    "strided slice": lambda x: np.repeat(x, 2, axis=0)[::2],
    "column slice": lambda x: np.concatenate([x, x], axis=1)[:, :x.shape[1]],
    "read-only": lambda x: _readonly(x),
    "big-endian": lambda x: x.astype(">f8"),
    "little-endian": lambda x: x.astype("<f8"),
    "list": lambda x: x.tolist(),
}


def _readonly(x):
    y = x.copy()
    y.setflags(write=False)
    return y


@st.composite
def valid_forms(draw, d=D):
    """(plain float64 array, the same numbers in another layout, byte order or container)."""
    x = _plain(draw(st.integers(0, 2**16)), draw(st.integers(1, 5)), d)
    if draw(st.booleans()):
        x = np.round(x * 2)     # integer-valued: int and bool forms hold the same numbers
        form = draw(st.sampled_from(list(LAYOUTS) + ["int64", "int8", "broadcast"]))
    else:
        form = draw(st.sampled_from(list(LAYOUTS) + ["broadcast"]))
    if form == "broadcast":
        x = np.repeat(x[:1], len(x), axis=0)
        return x, np.broadcast_to(x[0], x.shape)
    if form in ("int64", "int8"):
        return x, x.astype(form)
    return x, LAYOUTS[form](x)


EXTREMES = [0.0, 1e308, -1e308, 5e-324, -5e-324, np.inf, -np.inf, np.nan, 1e-300, 40.0, -40.0]


@st.composite
def bad_arrays(draw, d=D):
    """Arrays an entry point must refuse clearly or evaluate correctly."""
    kind = draw(st.sampled_from(["shape", "dtype", "extreme", "object"]))
    seed = draw(st.integers(0, 2**16))
    if kind == "shape":
        shape = draw(st.sampled_from([(), (d,), (1, d), (0, d), (3, d + 1), (3, 1), (2, 2, d), (0,), (3, 0),
                                      (1, 1, 1)]))
        return np.random.default_rng(seed).normal(size=shape)
    x = _plain(seed, draw(st.integers(1, 4)), d)
    if kind == "dtype":
        dtype = draw(st.sampled_from(["f2", "f4", ">f4", "<f4", "c16", "U8", "S8", "?", "u1", "i4", "O", "m8", "M8"]))
        return x.astype(dtype) if dtype[0] not in "mM" else x.astype("i8").astype(dtype)
    if kind == "extreme":
        value = draw(st.sampled_from(EXTREMES))
        mask = draw(st.lists(st.booleans(), min_size=x.size, max_size=x.size))
        x = x.copy()
        x.flat[np.flatnonzero(mask)] = value
        return x
    return draw(st.sampled_from([
        np.full((2, d), 2**70, dtype=object), np.full((2, d), 2**64 - 1, dtype=np.uint64), [[1.0], [1.0, 2.0]],
        None, "1.0", [[None] * d], np.zeros((2, d), dtype=[("a", "f8")]), {"x": 1},
    ]))


def _finite_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind in "fiub" and a.size and np.isfinite(a.astype("f8")).all()


def _check_result(lp, x, dtype):
    x, lp = np.asarray(x), np.asarray(lp)     # one event gives a NumPy scalar
    assert lp.dtype == dtype, lp.dtype
    assert lp.shape == x.shape[:-1]
    assert not np.isnan(lp).any(), "silent NaN"


# ---------------------------------------------------------------------------- flows
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FLOWS))
@settings(max_examples=20, **SETTINGS)
@given(form=valid_forms())
def test_log_prob_layouts_give_the_plain_result(name, backend, form):
    flow = flow_named(name)
    plain, other = form
    expected = flow.log_prob(plain, backend="numpy")
    got = flow.log_prob(other, backend=backend)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert got.dtype == np.float64 and got.shape == plain.shape[:-1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FLOWS))
@settings(max_examples=30, **SETTINGS)
@given(x=bad_arrays())
@example(x=np.full((4, D), 1e308))     # overflowed inside the flow: numpy leaked MLP's message, numba a NaN
@example(x=np.ones((2, D), dtype=">f8"))    # byte-swapped float64 was refused
def test_log_prob_bad_inputs(name, backend, x):
    flow = flow_named(name)
    lp = outcome(lambda: flow.log_prob(x, backend=backend), "TransformedDistribution.log_prob")
    if lp is not None:
        _check_result(lp, x, flow.dtype)
        other = BACKENDS[1 - BACKENDS.index(backend)]
        np.testing.assert_allclose(lp, flow.log_prob(x, backend=other), rtol=1e-9, atol=1e-12)


SAMPLE_SIZES = [-1, -(2**70), 2.0, 2.5, 10**30, 2**63, (2**40, 2**40), True, "3", None, (2, -1), (2, 2.0), [2, 1],
                np.int64(3), np.uint8(2), 0, (0,), (2, 0), 1, (1, 1), ()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["sample", "sample_and_log_prob"])
@settings(max_examples=12, **SETTINGS)
@given(n=st.sampled_from(SAMPLE_SIZES), seed=st.integers(0, 2**16))
def test_sample_sizes(backend, method, n, seed):
    flow = flow_named("RealNVP")
    out = outcome(lambda: getattr(flow, method)(n, rng=seed, backend=backend), f"TransformedDistribution.{method}")
    if out is None:
        return
    x, lp = out if method == "sample_and_log_prob" else (out, None)
    shape = () if isinstance(n, tuple) and not n else tuple(int(k) for k in np.atleast_1d(n))
    assert x.shape == shape + (D,) and x.dtype == np.float64
    assert np.isfinite(x).all()
    if lp is not None:
        assert lp.shape == shape and not np.isnan(lp).any()
    other = getattr(flow, method)(n, rng=seed, backend="numpy")
    np.testing.assert_allclose(x, other if lp is None else other[0], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- bijectors
BIJECTORS = {
    "Sigmoid": (nb.Sigmoid, 0),
    "Exp": (nb.Exp, 0),
    "Softplus": (nb.Softplus, 0),
    "Shift": (lambda: nb.Shift(np.array([0.5, -1.0])), 1),
}
BIJECTOR_METHODS = ["forward", "inverse", "forward_log_det_jacobian", "inverse_log_det_jacobian"]


@pytest.mark.parametrize("method", BIJECTOR_METHODS)
@pytest.mark.parametrize("name", sorted(BIJECTORS))
@settings(max_examples=25, **SETTINGS)
@given(x=bad_arrays())
@example(x=np.array([[1.5, 0.5]]))      # Sigmoid's inverse outside (0, 1)
@example(x=np.array([[0.0, 1.0]]))
def test_bijector_bad_inputs(name, method, x):
    make, event_ndims = BIJECTORS[name]
    b = make()
    fn = getattr(b, method)
    call = (lambda: fn(x, event_ndims=event_ndims)) if "log_det" in method else (lambda: fn(x))
    out = outcome(call, f"{b.name}.{method}")
    if out is None or not _finite_float(np.asarray(x)):
        return
    xa = np.asarray(x)
    # a parameter-free bijector computes in its input's float dtype (ints and bools become float64)
    assert out.dtype == (b.dtype or (xa.dtype.newbyteorder("=") if xa.dtype.kind == "f" else np.float64))
    shape = np.broadcast_shapes(xa.shape, *(np.shape(p) for _, p in b.parameters()))
    assert out.shape == (shape if "log_det" not in method else shape[:len(shape) - event_ndims])
    assert not np.isnan(out).any(), "silent NaN"


@pytest.mark.parametrize("method", BIJECTOR_METHODS)
@settings(max_examples=15, **SETTINGS)
@given(form=valid_forms())
def test_bijector_layouts(method, form):
    plain, other = form
    b = nb.Sigmoid()
    if method.startswith("inverse"):
        plain, other = b.forward(plain), (b.forward(np.asarray(other, dtype="f8")) if not isinstance(other, list)
                                          else b.forward(plain).tolist())
    fn = getattr(b, method)
    np.testing.assert_allclose(fn(other), fn(plain), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- base distributions
DISTRIBUTIONS = {
    "Normal": lambda: Normal(0.0, 1.0),
    "MultivariateNormalDiag": lambda: MultivariateNormalDiag(np.zeros(D), np.ones(D)),
}


@pytest.mark.parametrize("method", ["log_prob", "cdf"])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@settings(max_examples=25, **SETTINGS)
@given(x=bad_arrays())
@example(x=np.array([[1e308, -1e308]]))
def test_distribution_bad_inputs(name, method, x):
    dist = DISTRIBUTIONS[name]()
    out = outcome(lambda: getattr(dist, method)(x), name)
    if out is None or not _finite_float(np.asarray(x)):
        return
    xa = np.asarray(x)
    assert out.dtype == np.float64
    assert out.shape == (xa.shape if name == "Normal" else xa.shape[:-1])
    assert not np.isnan(out).any(), "silent NaN"


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@settings(max_examples=15, **SETTINGS)
@given(form=valid_forms())
def test_distribution_layouts(name, form):
    dist = DISTRIBUTIONS[name]()
    plain, other = form
    np.testing.assert_allclose(dist.log_prob(other), dist.log_prob(plain), rtol=1e-13)


# ---------------------------------------------------------------------------- training and the estimator
def _fit_outcome(make, x, backend, context=None):
    flow = make()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flow, fit(flow, x, context=context, epochs=1, batch_size=4, backend=backend, rng=0)
    except RuntimeError as exc:
        # documented: every step rejected (the loss overflowed), the flow left as it was
        assert str(exc).startswith("fit:"), exc
        return flow, None
    except (ValueError, TypeError) as exc:
        assert "fit" in str(exc), f"{type(exc).__name__} not naming fit: {exc}"
        return flow, None


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, **SETTINGS)
@given(x=bad_arrays())
@example(x=np.full((4, D), 1e308))     # numpy's pass leaked MLP.forward_with_cache's message
@example(x=np.array(0.5))     # a scalar: an IndexError from inside fit
def test_fit_bad_data(backend, x):
    flow, history = _fit_outcome(FLOWS["RealNVP"], x, backend)
    if history is not None:
        assert all(np.isfinite(p).all() for _, p in flow.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10, **SETTINGS)
@given(form=valid_forms())
def test_fit_layouts(backend, form):
    plain, other = form
    a, ha = _fit_outcome(FLOWS["RealNVP"], plain, backend)
    b, hb = _fit_outcome(FLOWS["RealNVP"], other, backend)
    for (_, pa), (_, pb) in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pa, pb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, **SETTINGS)
@given(c=bad_arrays(d=1))
def test_fit_and_log_prob_bad_context(backend, c):
    x = _plain(0, 4)
    make = lambda: flows.RealNVP(D, n_layers=2, hidden=(4,), context=1, rng=0)     # noqa: E731
    flow, history = _fit_outcome(make, x, backend, context=c)
    lp = outcome(lambda: flow.log_prob(x, context=c, backend=backend), "TransformedDistribution.log_prob")
    if lp is not None:
        assert lp.dtype == np.float64 and not np.isnan(lp).any()


_EST = {}


def fitted_estimator():
    if "est" not in _EST:
        _EST["est"] = nflow_np.FlowDensity(n_layers=1, hidden=(4,), epochs=1, batch_size=4, random_state=0).fit(
            _plain(1, 8))
    return _EST["est"]


@settings(max_examples=20, **SETTINGS)
@given(x=bad_arrays())
def test_flow_density_bad_inputs(x):
    est = fitted_estimator()
    scores = outcome(lambda: est.score_samples(x), "FlowDensity")
    if scores is not None:
        assert scores.shape == (np.shape(x)[0],) and scores.dtype == np.float64
        assert not np.isnan(scores).any(), "silent NaN"
    new = nflow_np.FlowDensity(n_layers=1, hidden=(4,), epochs=1, batch_size=4, random_state=0)
    if outcome(lambda: new.fit(x), "FlowDensity") is not None:
        assert np.isfinite(new.score_samples(_plain(2, 3))).all()


@settings(max_examples=12, **SETTINGS)
@given(form=valid_forms())
def test_flow_density_layouts(form):
    plain, other = form
    est = fitted_estimator()
    np.testing.assert_allclose(est.score_samples(other), est.score_samples(plain), rtol=1e-10)


@settings(max_examples=12, **SETTINGS)
@given(n=st.sampled_from(SAMPLE_SIZES))
def test_flow_density_sample_sizes(n):
    out = outcome(lambda: fitted_estimator().sample(n, random_state=0), "FlowDensity")
    if out is not None:
        assert out.shape == (int(n), D) and np.isfinite(out).all()


# ---------------------------------------------------------------------------- check_bijector
@settings(max_examples=20, **SETTINGS)
@given(x=bad_arrays())
@example(x=np.zeros((0, D)))    # no points: an IndexError from inside the checker
def test_check_bijector_inputs(x):
    report = outcome(lambda: check_bijector(nb.Sigmoid(), x, check_vjp=False), "check_bijector")
    if report is not None:
        assert isinstance(report, dict)


# ---------------------------------------------------------------------------- CUDA (GPU or simulator)
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.mark.cuda
@pytest.mark.skipif(not (SIMULATED or cuda_available()), reason="needs a GPU or NUMBA_ENABLE_CUDASIM=1")
@settings(max_examples=8, **SETTINGS)
@given(x=st.one_of(bad_arrays(), valid_forms().map(lambda f: f[1])))
def test_log_prob_cuda(x):
    flow = flow_named("RealNVP")
    lp = outcome(lambda: flow.log_prob(x, backend="cuda"), "TransformedDistribution.log_prob")
    if lp is not None:
        _check_result(lp, x, flow.dtype)
        np.testing.assert_allclose(lp, flow.log_prob(x, backend="numpy"), rtol=1e-9, atol=1e-12)
