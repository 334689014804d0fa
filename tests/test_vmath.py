"""The vectorizable exp_/tanh_ of nflow_np.kernels.vmath against a long-double NumPy reference, in ulp."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from nflow_np.kernels import vmath  # noqa: E402
from nflow_np.kernels.backend import load_numba  # noqa: E402

LD = np.longdouble
# the documented bound (vmath's docstring) and what the measured maxima were when it was written
BOUND = {"exp_": 2.0, "tanh_": 2.0}


def _samples(dtype, lo, hi, n):
    """Dense samples of [lo, hi], plus the edge values."""
    ft = np.dtype(dtype).type
    info = np.finfo(dtype)
    edges = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal,
             info.eps, -info.eps, 1.0, -1.0, 0.5, 0.55, -0.55, 20.0, -20.0, np.inf, -np.inf, np.nan,
             info.max, -info.max]
    if dtype == np.float32:
        edges += [88.72283, 88.72284, 88.7229, 89.0, -87.33655, -103.27893, -103.97208, -103.9721, -104.0]
    else:
        edges += [709.782712893384, 709.7827128933841, 710.0, -708.3964185322641, -744.4400719213812,
                  -745.1332191019411, -745.1332191019412, -746.0]
    dense = np.linspace(lo, hi, n)
    rng = np.random.default_rng(0)
    logs = np.exp(rng.uniform(-40, np.log(max(abs(lo), abs(hi))), n)) * rng.choice([-1.0, 1.0], n)
    return np.concatenate([np.array(edges), dense, logs]).astype(dtype).astype(ft)


def _ulp_error(got, ref, dtype):
    """|got - ref| in units of the spacing of dtype at ref (subnormal spacing below tiny)."""
    ref_d = ref.astype(dtype)
    spacing = np.spacing(np.abs(ref_d)).astype(LD)
    spacing = np.maximum(spacing, LD(np.finfo(dtype).smallest_subnormal))
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(LD) - ref) / spacing
    same_special = (np.isnan(got) & np.isnan(ref_d)) | (np.isinf(got) & (got.astype(LD) == ref_d))
    return np.where(same_special, 0.0, err).astype(np.float64), ref_d


def _loop(name):
    load_numba()
    fn = getattr(vmath, name)

    @numba.njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = fn(x[i])
    return apply


CASES = [("exp_", np.exp, -800.0, 800.0), ("tanh_", np.tanh, -25.0, 25.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ref_fn,lo,hi", CASES)
def test_compiled_against_numpy(name, ref_fn, lo, hi, dtype):
    x = _samples(dtype, lo, hi, 200_001)
    out = np.empty_like(x)
    _loop(name)(x, out)
    assert out.dtype == dtype
    with np.errstate(over="ignore", under="ignore"):
        ref = ref_fn(x.astype(LD))
    err, ref_d = _ulp_error(out, ref, dtype)
    worst = int(np.argmax(err))
    assert err.max() <= BOUND[name], (name, dtype, x[worst], out[worst], ref[worst], err.max())
    # special values exactly like NumPy: NaN where NumPy gives NaN, the same infinities, the same signed zeros
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref_d))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref_d))
    zero = ref_d == 0
    np.testing.assert_array_equal(np.signbit(out[zero]), np.signbit(ref_d[zero]))
    if name == "tanh_":
        assert np.all(np.abs(out[~np.isnan(out)]) <= 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ref_fn,lo,hi", CASES)
def test_plain_python_path(name, ref_fn, lo, hi, dtype):
    """The same source run as plain Python (the simulator and the NumPy-less paths run it so)."""
    fn = getattr(vmath, name)
    fn = getattr(fn, "py_func", fn)
    x = _samples(dtype, lo, hi, 301)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        out = np.array([fn(v) for v in x], dtype=dtype)
        ref = ref_fn(x.astype(LD))
    err, _ = _ulp_error(out, ref, dtype)
    assert err.max() <= BOUND[name]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref.astype(dtype)))


def test_float32_stays_float32():
    """Compiled for a float32 argument, the functions return float32 (no float64 constant crept in)."""
    load_numba()
    for fn in (vmath.exp_, vmath.tanh_):
        fn(np.float32(1.5))
        sigs = {str(sig.args[0]): str(sig.return_type) for sig in fn.nopython_signatures}
        assert sigs["float32"] == "float32"
