"""Numerically stable scalar functions; SciPy's special functions on first use.

``import nflow_np`` must need NumPy alone, so SciPy is imported here lazily,
by the first call that needs the normal CDF or its inverse.
"""

import numpy as np


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.result_type(x, np.float32), copy=False)


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), exact in both tails."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x)."""
    return -softplus(-x)


def _scipy_special():
    import scipy.special
    return scipy.special


def _keep_dtype(fn, x):
    x = np.asarray(x)
    out = fn(x)
    return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out


def ndtr(x):
    """The standard normal CDF."""
    return _keep_dtype(_scipy_special().ndtr, x)


def ndtri(p):
    """The inverse of the standard normal CDF (about 1e-14 relative accuracy in float64)."""
    return _keep_dtype(_scipy_special().ndtri, p)


def log_ndtr(x):
    """log of the standard normal CDF, finite far into the lower tail (log_ndtr(-30) is about -454)."""
    return _keep_dtype(_scipy_special().log_ndtr, x)
