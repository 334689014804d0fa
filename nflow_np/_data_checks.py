"""Argument checks shared by the data set samplers (:mod:`nflow_np.datasets`)."""

import numpy as np

from ._validation import as_float_array, as_generator, check_event_shape, resolve_dtype


def _check_n(n, where):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{where}: n must be a positive int; got {n!r} ({type(n).__name__})")
    if n <= 0:
        raise ValueError(f"{where}: n must be a positive int; got {n}")
    return int(n)


def _out_dtype(dtype, where):
    return resolve_dtype(dtype, where=where)


def _setup(n, rng, dtype, where):
    return _check_n(n, where), as_generator(rng), _out_dtype(dtype, where)


def _scalar(value, where, name, *, low=0.0, strict=True):
    """A finite Python float above ``low`` (or at/above it when ``strict`` is False)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: {name} must be a real number; got {value!r}")
    value = float(value)
    ok = np.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{where}: {name} must be finite and {relation} {low:g}; got {value}")
    return value


def _points(x, where):
    """``x`` as a finite float ndarray of shape (..., 2), its own float dtype kept."""
    arr = as_float_array(x, None, where, "x")
    check_event_shape(arr, 1, 2, where, "x")
    return arr
