"""The vectorizable exp_/tanh_/log_/log1p_ of nflow_np.kernels.vmath against a long-double NumPy reference, in ulp."""

import re

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from nflow_np.kernels import vmath  # noqa: E402
from nflow_np.kernels.backend import load_numba  # noqa: E402

LD = np.longdouble
# the documented bound (vmath's docstring) and what the measured maxima were when it was written
BOUND = {"exp_": 2.0, "tanh_": 2.0, "log_": 2.0, "log1p_": 2.0}


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


def _positive_bits(dtype, n, rng):
    """Positive floats with uniformly random bit patterns: every binade, subnormals to the largest, equally often."""
    if dtype == np.float32:
        return rng.integers(1, 0x7f800000, n, dtype=np.int32).view(np.float32)
    return rng.integers(1, 0x7ff0000000000000, n, dtype=np.int64).view(np.float64)


def _log_samples(dtype, n):
    """log_'s arguments: every binade, dense around 1 (where log is small) and the reduction's seam at sqrt(2),
    and the special values (zeros, negatives, infinities, NaN)."""
    ft = np.dtype(dtype).type
    info = np.finfo(dtype)
    rng = np.random.default_rng(1)
    one = ft(1)
    root2 = np.sqrt(ft(2))
    edges = [0.0, -0.0, info.tiny, info.smallest_subnormal, 2 * info.smallest_subnormal, -info.tiny,
             -info.smallest_subnormal, np.nextafter(info.tiny, ft(0)), info.max, -info.max, 1.0, -1.0, 2.0, 0.5,
             np.nextafter(one, ft(2)), np.nextafter(one, ft(0)), root2, np.nextafter(root2, ft(0)),
             np.nextafter(root2, ft(2)), root2 / 2, np.nextafter(root2 / 2, ft(0)), np.nextafter(root2 / 2, ft(2)),
             np.e, np.inf, -np.inf, np.nan, -np.nan]
    return np.concatenate([np.array(edges, dtype=dtype), _positive_bits(dtype, n, rng),
                           rng.uniform(0.5, 2.0, n).astype(dtype),
                           (1 + rng.uniform(-1, 1, n) * np.exp(rng.uniform(-40, 0, n))).astype(dtype),
                           -_positive_bits(dtype, n // 20, rng)]).astype(ft)


def _log1p_samples(dtype, n):
    """log1p_'s arguments: every binade of either sign, dense on (-1, 1] and just above -1, and the edges: -1,
    below it, the zeros, the subnormals (where log1p(x) is x), the largest, infinities, NaN."""
    ft = np.dtype(dtype).type
    info = np.finfo(dtype)
    rng = np.random.default_rng(2)
    m1 = ft(-1)
    edges = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal, info.eps,
             -info.eps, info.epsneg, -info.epsneg, 1e-30, -1e-30, np.nextafter(ft(1e-30), ft(1)),
             np.nextafter(ft(-1e-30), ft(-1)), -1.0, np.nextafter(m1, ft(0)), np.nextafter(m1, ft(-2)), -0.5, -2.0,
             1.0, 2.0, np.sqrt(2) - 1, 1 - np.sqrt(0.5), info.max, -info.max, np.inf, -np.inf, np.nan]
    tiny_pos = _positive_bits(dtype, n, rng)
    small = np.exp(rng.uniform(-60, 0, n)) * rng.choice([-1.0, 1.0], n)
    return np.concatenate([np.array(edges, dtype=dtype), tiny_pos, -tiny_pos[: n // 20],
                           rng.uniform(-1, 1, n).astype(dtype), small.astype(dtype),
                           (-1 + np.exp(rng.uniform(-50, 0, n // 4))).astype(dtype)]).astype(ft)


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


def _range(lo, hi):
    return lambda dtype, n: _samples(dtype, lo, hi, n)


CASES = [("exp_", np.exp, _range(-800.0, 800.0)), ("tanh_", np.tanh, _range(-25.0, 25.0)),
         ("log_", np.log, _log_samples), ("log1p_", np.log1p, _log1p_samples)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ref_fn,sampler", CASES)
def test_compiled_against_numpy(name, ref_fn, sampler, dtype):
    x = sampler(dtype, 200_001)
    out = np.empty_like(x)
    _loop(name)(x, out)
    assert out.dtype == dtype
    with np.errstate(all="ignore"):
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
@pytest.mark.parametrize("name,ref_fn,sampler", CASES)
def test_plain_python_path(name, ref_fn, sampler, dtype):
    """The same source run as plain Python (the simulator and the NumPy-less paths run it so)."""
    fn = getattr(vmath, name)
    fn = getattr(fn, "py_func", fn)
    x = sampler(dtype, 301)
    with np.errstate(all="ignore"):
        out = np.array([fn(v) for v in x], dtype=dtype)
        ref = ref_fn(x.astype(LD))
    err, ref_d = _ulp_error(out, ref, dtype)
    assert err.max() <= BOUND[name]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref_d))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref_d))


def test_float32_stays_float32():
    """Compiled for a float32 argument, the functions return float32 (no float64 constant crept in)."""
    load_numba()
    for fn in (vmath.exp_, vmath.tanh_, vmath.log_, vmath.log1p_):
        fn(np.float32(1.5))
        sigs = {str(sig.args[0]): str(sig.return_type) for sig in fn.nopython_signatures}
        assert sigs["float32"] == "float32"


def test_special_values_exactly():
    """NumPy's values where log and log1p have no rounding to speak of, compiled and as plain Python."""
    load_numba()
    for dtype in (np.float32, np.float64):
        ft = np.dtype(dtype).type
        sub = np.finfo(dtype).smallest_subnormal
        log_cases = [(0.0, -np.inf), (-0.0, -np.inf), (1.0, 0.0), (-1.0, np.nan), (-sub, np.nan),
                     (np.inf, np.inf), (-np.inf, np.nan), (np.nan, np.nan)]
        log1p_cases = [(0.0, 0.0), (-0.0, -0.0), (-1.0, -np.inf), (-2.0, np.nan), (np.inf, np.inf),
                       (-np.inf, np.nan), (np.nan, np.nan), (sub, sub), (-sub, -sub), (1e-30, 1e-30),
                       (-1e-30, -1e-30)]
        for fn, cases in ((vmath.log_, log_cases), (vmath.log1p_, log1p_cases)):
            for run in (fn, fn.py_func):
                for x, want in cases:
                    with np.errstate(all="ignore"):
                        got = run(ft(x))
                    got = ft(got)
                    np.testing.assert_array_equal(got, ft(want), err_msg=f"{fn.__name__}({dtype.__name__}({x}))")
                    assert np.signbit(got) == np.signbit(ft(want)) or np.isnan(want), (fn, dtype, x, got)


def test_log_subnormals_exact_exponent():
    """log(2^-k) for subnormal powers of two: the rescaling by 2^23 / 2^54 must give back the exact exponent."""
    for dtype, bits in ((np.float32, 149), (np.float64, 1074)):
        x = np.ldexp(np.ones(bits, dtype=dtype), -np.arange(1, bits + 1))
        out = np.empty_like(x)
        _loop("log_")(x, out)
        ref = -np.arange(1, bits + 1, dtype=LD) * np.log(LD(2))
        err, _ = _ulp_error(out, ref, dtype)
        assert err.max() <= 1.0, (dtype, x[np.argmax(err)], err.max())


def _host_has_avx2():
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx2", False))


@pytest.mark.skipif(not _host_has_avx2(), reason="the vector width asserted is AVX2's")
@pytest.mark.parametrize("name", ["exp_", "tanh_", "log_", "log1p_"])
def test_loop_vectorizes(name):
    """What the functions are for: a loop calling them compiles to vector code with no math-library call."""
    apply = _loop(name)
    for dtype, lanes in ((np.float32, 8), (np.float64, 4)):
        x = np.ones(64, dtype=dtype)
        apply(x, np.empty_like(x))
        ir = next(text for sig, text in apply.inspect_llvm().items() if str(sig[0].dtype) == np.dtype(dtype).name)
        kind = "float" if dtype == np.float32 else "double"
        widths = [int(w) for w in re.findall(r"<(\d+) x " + kind + ">", ir)]
        assert widths and max(widths) >= lanes, (name, dtype, sorted(set(widths)))
        calls = set(re.findall(r"@(?:llvm\.)?(log1p|log|exp|expm1|tanh)(?:f|\.f32|\.f64)?\b", ir))
        assert not calls, (name, dtype, calls)
