"""Vectorizable ``exp``, ``tanh``, ``log`` and ``log1p`` for the compiled hot loops, float32 and float64.

Numba compiles ``math.exp``, ``math.tanh``, ``math.log`` and ``math.log1p`` inside a loop to one library call
per element: the llvmlite wheels come without Intel's SVML, so nothing turns those calls into vector code. The
functions here are plain arithmetic (range reduction, a polynomial, an exponent built from or read from integer
bits), with no call and no data-dependent branch, so LLVM vectorizes a loop that calls them (8 float32 or 4
float64 lanes with AVX2).

Like :mod:`.scalar`, each function is plain Python on one scalar, compiled by Numba as a
:func:`~nflow_np.kernels.backend.numba_twin`. The working dtype is the argument's: every constant is
``f(...)`` with ``f = type(x)``, so float32 stays float32 (a bare ``0.5`` would promote it to float64), and the
float32/float64 choice is a test on constants that the compiler folds away.

Special values follow NumPy: NaN propagates, ``exp_(inf) = inf``, ``exp_(-inf) = 0``, ``exp_`` overflows to
``inf`` and underflows through the subnormals to 0, ``tanh_`` saturates at +-1 and keeps the sign of -0;
``log_(+-0) = -inf``, ``log_(inf) = inf``, ``log_`` of a negative number (``-inf`` included) is NaN, and subnormal
arguments are exact to the exponent; ``log1p_(-1) = -inf``, ``log1p_`` below -1 is NaN, ``log1p_(inf) = inf``, and
``log1p_(x) = x`` for ``|x| < 1e-30`` (zeros of either sign, subnormals).

Error bounds (checked by ``tests/test_vmath.py`` against a long-double reference over the whole range):
``exp_`` and ``tanh_`` are within 2 ulp in float32 and in float64 (measured maxima over 4e6 samples: exp_ 0.89
(float32) and 0.87 (float64) ulp, tanh_ 1.42 and 1.50 ulp); so are ``log_`` and ``log1p_`` (measured maxima over
3e6 samples, every binade, ``python tests/measure_vmath_ulp.py``: log_ 0.80 (float32) and 0.79 (float64) ulp,
log1p_ 0.82 and 0.80 ulp; on every float32 in [0.25, 4) for log_, in [-1, -2^-8] and [2^-8, 4) for log1p_, and
on every 61st float32 bit pattern: 0.84 ulp for both).

On a CUDA device these functions are replaced by ``math.exp``/``math.tanh``/``math.log``/``math.log1p``
(:func:`nflow_np.kernels.cuda.device.device_version` follows ``device_twin``): the GPU's own versions are
fast already, and the integer bit tricks below are CPU-only.

The functions are compiled without ``reassoc`` (``strict_fp``): reassociation could fold the two-part
``ln 2`` of the range reduction into one constant, multiply the two exponent halves together first, or cancel
log1p's exact rounding error ``(a - (a + b)) + b`` to 0.
"""

import math

import numpy as np

from .backend import numba_twin

__all__ = ["exp_", "tanh_", "log_", "log1p_"]


def _strict(device=None):
    """Mark a function for compilation without ``reassoc``; ``device``: its replacement on a CUDA device."""
    def mark(fn):
        fn.strict_fp = True
        if device is not None:
            fn.device_twin = device
        return numba_twin(fn)
    return mark


def _exp_device(x):
    return math.exp(x)


def _tanh_device(x):
    return math.tanh(x)


def _log_device(x):
    return math.log(x)


def _log1p_device(x):
    return math.log1p(x)


# ---------------------------------------------------------------- exp

@_strict()
def _pow2_32(k):
    """``2**k`` as float32 for an int32 ``k`` in [-126, 127], from its exponent bits."""
    return np.int32((k + np.int32(127)) << np.int32(23)).view(np.float32)


@_strict()
def _pow2_64(k):
    """``2**k`` as float64 for an int64 ``k`` in [-1022, 1023]."""
    return np.int64((k + np.int64(1023)) << np.int64(52)).view(np.float64)


@_strict()
def _exp32(x):
    f = np.float32
    # past these, exp is inf (or rounds to 0); clamped, k stays in [-150, 128] and each half of it is normal
    x = max(min(x, f(89.0)), f(-104.0))         # NaN passes both
    t = x * f(1.44269504088896341)
    t = t if t == t else f(0.0)                  # NaN: any k will do, r is NaN
    t = t + np.copysign(f(0.5), t)
    k = np.int32(t)                              # round to nearest
    kf = f(k)
    r = (x - kf * f(0.693359375)) - kf * f(-2.12194440e-4)    # x - k ln2, ln2 in two parts
    p = f(1.0 / 5040.0) * r + f(1.0 / 720.0)
    p = p * r + f(1.0 / 120.0)
    p = p * r + f(1.0 / 24.0)
    p = p * r + f(1.0 / 6.0)
    p = p * r + f(0.5)
    p = p * r + f(1.0)
    p = p * r + f(1.0)
    k1 = k >> np.int32(1)
    return (p * _pow2_32(k1)) * _pow2_32(k - k1)





@_strict()
def _exp64(x):
    f = np.float64
    x = max(min(x, f(710.0)), f(-746.0))
    t = x * f(1.44269504088896338700)
    t = t if t == t else f(0.0)
    t = t + np.copysign(f(0.5), t)
    k = np.int32(t)
    kf = f(k)
    r = (x - kf * f(6.93147180369123816490e-01)) - kf * f(1.90821492927058770002e-10)
    p = f(1.0 / 6227020800.0) * r + f(1.0 / 479001600.0)     # Taylor to degree 13: |r| <= ln2 / 2
    p = p * r + f(1.0 / 39916800.0)
    p = p * r + f(1.0 / 3628800.0)
    p = p * r + f(1.0 / 362880.0)
    p = p * r + f(1.0 / 40320.0)
    p = p * r + f(1.0 / 5040.0)
    p = p * r + f(1.0 / 720.0)
    p = p * r + f(1.0 / 120.0)
    p = p * r + f(1.0 / 24.0)
    p = p * r + f(1.0 / 6.0)
    p = p * r + f(0.5)
    p = p * r + f(1.0)
    p = p * r + f(1.0)
    k64 = np.int64(k)
    k1 = k64 >> np.int64(1)
    return (p * _pow2_64(k1)) * _pow2_64(k64 - k1)


@_strict(_exp_device)
def exp_(x):
    """``exp(x)`` in the dtype of ``x`` (float32 or float64), vectorizable."""
    f = type(x)
    if f(1.0) + f(1e-10) == f(1.0):     # float32 (folded at compile time)
        return f(_exp32(np.float32(x)))
    return f(_exp64(np.float64(x)))


# ---------------------------------------------------------------- tanh

@_strict(_tanh_device)
def tanh_(x):
    """``tanh(x)`` in the dtype of ``x``: an odd polynomial below 0.55, ``1 - 2 / (exp(2|x|) + 1)`` above (where
    ``tanh >= 1/2``, so the subtraction is exact); both are computed and one is chosen, without a branch."""
    f = type(x)
    u = x * x
    if f(1.0) + f(1e-10) == f(1.0):     # float32: tanh(x) = x + x u q(u), a fitted q
        q = f(-0.006250813137739897) * u + f(0.021053500473499298)
        q = q * u + f(-0.05384736508131027)
        q = q * u + f(0.13332532346248627)
        q = q * u + f(-0.33333316445350647)
    else:                               # float64: Taylor's first two terms, then fitted
        q = f(5.317333300050662e-05) * u + f(-0.00021358794064104962)
        q = q * u + f(0.0005812681850648264)
        q = q * u + f(-0.001453981170749441)
        q = q * u + f(0.0035918849288225415)
        q = q * u + f(-0.008863216478888221)
        q = q * u + f(0.021869487731657037)
        q = q * u + f(-0.05396825395446308)
        q = q * u + f(0.13333333333333333)
        q = q * u + f(-0.3333333333333333)
    small = x + x * (u * q)
    small = x if u == f(0.0) else small     # -0 stays -0 (the sum above gives +0)
    ax = abs(x)
    big = f(1.0) - f(2.0) / (exp_(f(2.0) * ax) + f(1.0))      # exp overflows to inf: big is 1
    big = np.copysign(big, x)
    return small if ax < f(0.55) else big


# ---------------------------------------------------------------- log, log1p
# x = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f), so |s| <= 3 - 2 sqrt(2). Then
#   log(m) = 2 atanh(s) = 2s + s R(s^2) = f - f^2/2 + s (f^2/2 + R(s^2))
# (the last form is an identity: f - s f = 2s), and R(z) ~ z P(z), P fitted by tests/fit_vmath_log.py (a Remez
# fit in long double of max |R - zP| over z <= 0.0295: 3 coefficients for float32, 7 for float64, a few hundredths
# of an ulp before the rounding of the evaluation). k ln2 is added in two parts, the high one exact times k.

@_strict()
def _split32(x):
    """``(m, k)``, ``x = 2^k m``, ``m`` in ``[sqrt(1/2), sqrt(2))``, ``k`` as float32, for a positive finite float32
    ``x`` (subnormals included)."""
    f = np.float32
    sub = x < f(1.1754943508222875e-38)
    x = x * f(8388608.0) if sub else x                       # 2^23: a subnormal becomes normal
    # adding bits(1) - bits(sqrt(1/2)) carries into the exponent exactly when the significand is >= sqrt(2),
    # and adding bits(sqrt(1/2)) to the low bits left makes m
    ix = np.float32(x).view(np.int32) + np.int32(0x004afb0d)
    k = (ix >> np.int32(23)) - np.int32(127)
    m = np.int32((ix & np.int32(0x007fffff)) + np.int32(0x3f3504f3)).view(np.float32)
    return m, f(k) - (f(23.0) if sub else f(0.0))


@_strict()
def _split64(x):
    """``(m, k)`` for a positive finite float64 ``x``, as :func:`_split32`."""
    f = np.float64
    sub = x < f(2.2250738585072014e-308)
    x = x * f(18014398509481984.0) if sub else x             # 2^54
    ix = np.float64(x).view(np.int64) + np.int64(0x00095f619980c433)
    k = np.int32(ix >> np.int64(52)) - np.int32(1023)        # int32: its conversion to float64 vectorizes
    m = np.int64((ix & np.int64(0x000fffffffffffff)) + np.int64(0x3fe6a09e667f3bcd)).view(np.float64)
    return m, f(k) - (f(54.0) if sub else f(0.0))


@_strict()
def _split(x):
    """:func:`_split32` or :func:`_split64`, by the dtype of ``x``; ``(m, k)`` in that dtype."""
    f = type(x)
    if f(1.0) + f(1e-10) == f(1.0):             # float32 (folded at compile time)
        m, k = _split32(np.float32(x))
        return f(m), f(k)
    m, k = _split64(np.float64(x))
    return f(m), f(k)


@_strict()
def _log_plus(x, c):
    """``log(x) + c`` in the dtype of ``x``, ``c`` a correction far below ``log(x)``'s ulp scale (0 for ``log``;
    log1p's rounding error of ``1 + x``, over that sum); NumPy's values at 0, negative, infinite and NaN ``x``."""
    f = type(x)
    single = f(1.0) + f(1e-10) == f(1.0)
    # the bit arithmetic on positive finite values only; the special values are chosen at the end
    xs = x if (x > f(0.0)) & (x < f(np.inf)) else f(1.0)
    m, k = _split(xs)
    ln2_hi = f(0.693359375) if single else f(6.93147180369123816490e-01)
    ln2_lo = f(-2.12194440e-4) if single else f(1.90821492927058770002e-10)
    fm = m - f(1.0)
    s = fm / (f(2.0) + fm)
    z = s * s
    if single:
        p = f(0.29871729) * z + f(0.399775416)
        p = p * z + f(0.666667759)
    else:
        p = f(0.14797978358868188) * z + f(0.15313832537647576)
        p = p * z + f(0.1818357360389008)
        p = p * z + f(0.22222198375469823)
        p = p * z + f(0.28571428744574984)
        p = p * z + f(0.39999999999403069)
        p = p * z + f(0.66666666666667362)
    hfsq = f(0.5) * fm * fm
    r = k * ln2_hi + (fm - (hfsq - (s * (hfsq + z * p) + (k * ln2_lo + c))))
    r = r if x < f(np.inf) else x               # inf, and NaN
    r = r if x != f(0.0) else f(-np.inf)        # -0 too
    return f(np.nan) if x < f(0.0) else r


@_strict(_log_device)
def log_(x):
    """``log(x)`` in the dtype of ``x`` (float32 or float64), vectorizable; ``log(0) = -inf``, NaN below 0."""
    f = type(x)
    return _log_plus(x, f(0.0))


@_strict(_log1p_device)
def log1p_(x):
    """``log(1 + x)`` in the dtype of ``x``, accurate for small ``|x|``: ``log(u) + e / u`` with ``u = 1 + x``
    rounded and ``e = (1 + x) - u`` its rounding error, exact by Fast2Sum (larger operand first)."""
    f = type(x)
    big = x > f(1.0)                            # the larger operand first (below -1 the result is NaN anyway)
    a = x if big else f(1.0)
    b = f(1.0) if big else x                    # NaN: b, so u is NaN
    u = a + b
    e = (a - u) + b
    c = e / u                                   # NaN or inf only where log(u) is chosen as a special value
    r = _log_plus(u, c)
    return x if abs(x) < f(1e-30) else r        # +-0 and the subnormals exactly (log1p(x) = x there)
