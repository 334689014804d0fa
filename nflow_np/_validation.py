"""Input checks shared by bijectors and distributions.

Every public entry point funnels its arrays through these helpers so that bad
input fails early with a message naming the caller, the argument and what was
expected, instead of surfacing later as a NaN.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype, *arrays, where=None):
    """The float dtype of an object built from ``arrays`` (``where`` names the object in errors).

    An explicit ``dtype`` wins; otherwise a float32/float64 ndarray among
    ``arrays`` sets it (all float ndarrays must agree); otherwise float64.
    """
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{where or 'dtype'}: dtype must be float32 or float64; got {dtype!r}") from None
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where or 'dtype'}: dtype must be float32 or float64; got {dtype}")
        return dtype
    found = None
    for a in arrays:
        if isinstance(a, (np.ndarray, np.generic)) and a.dtype.kind == "f":
            if found is not None and a.dtype != found:
                raise TypeError(f"{where or 'parameters'}: parameters mix dtypes {found} and {a.dtype}; "
                                f"pass dtype= to choose one")
            found = a.dtype
    if found is None:
        return np.dtype(np.float64)
    if found not in FLOAT_DTYPES:
        raise TypeError(f"{where or 'parameters'}: parameters must be float32 or float64; got {found}")
    return found


def _first_bad_index(mask):
    flat = int(np.argmax(mask))
    return np.unravel_index(flat, mask.shape) if mask.ndim else ()


def _fmt_index(idx):
    if len(idx) == 1:
        return str(int(idx[0]))
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def is_dask_array(x):
    """Whether ``x`` is a ``dask.array.Array``, asked without importing Dask (which loads only when one arrives)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks") and hasattr(x, "dask")


def as_float_array(x, dtype, where, name):
    """Convert ``x`` to a finite float ndarray of ``dtype``.

    ``dtype=None`` accepts either float32 or float64 as given (ints, bools and
    Python numbers become float64). A float ndarray of a different float dtype
    than ``dtype`` is refused: dtypes are never mixed silently.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        arr = np.asarray(x)
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{where}: {name} must be array-like numbers; {exc}") from None
        if arr.dtype == object:
            raise TypeError(f"{where}: {name} must be array-like numbers (a ragged list or non-numeric values?)")
    kind = arr.dtype.kind
    if kind == "f" and dtype is not None and not isinstance(x, (np.ndarray, np.generic)):
        # Python numbers and lists carry no dtype of their own: they take the object's
        arr = arr.astype(dtype)
    if kind == "f" and not arr.dtype.isnative:
        # a byte-swapped float32/float64 holds the same numbers: compute on them in native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if kind == "f":
        if arr.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where}: {name} has dtype {arr.dtype}; expected float32 or float64")
        if dtype is not None and arr.dtype != dtype:
            raise TypeError(
                f"{where}: {name} has dtype {arr.dtype} but this object computes in {dtype}; "
                f"cast the input (x.astype(np.{dtype})) or build the object with dtype=np.{arr.dtype}"
            )
    elif kind in "biu":
        arr = arr.astype(dtype if dtype is not None else np.float64)
    else:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype}; expected real numbers")
    check_finite(arr, where, name)
    return arr


def check_finite(arr, where, name):
    """Raise ``ValueError`` naming the first NaN or infinity in ``arr``."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = ~finite
        idx = _first_bad_index(bad)
        raise ValueError(f"{where}: {name} must be finite; got {arr[idx]} at index {_fmt_index(idx)}"
                         if idx else f"{where}: {name} must be finite; got {arr}")


def check_interval(arr, low, high, where, name, *, closed=False):
    """Raise ``ValueError`` unless every element lies in (low, high) (or [low, high] with ``closed``)."""
    ok = ((arr >= low) & (arr <= high)) if closed else ((arr > low) & (arr < high))
    if np.all(ok):
        return
    bad = ~np.asarray(ok)
    idx = _first_bad_index(bad)
    value = np.broadcast_to(arr, bad.shape)[idx]
    lo, hi = ("[", "]") if closed else ("(", ")")
    if np.ndim(low) == 0 and np.ndim(high) == 0:
        extreme = f" (min {np.min(arr)}, max {np.max(arr)})"
        bounds = f"{lo}{_num(low)}, {_num(high)}{hi}"
    else:
        extreme = ""
        bounds = f"{lo}low, high{hi} of its parameters"
    at = f" at index {_fmt_index(idx)}" if idx else ""
    raise ValueError(f"{where}: {name} must lie in {bounds}; got {value}{at}{extreme}")


def _num(v):
    v = float(v)
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:g}"


def check_event_shape(arr, event_ndims, size, where, name):
    """Check ``arr`` has at least ``event_ndims`` axes and the trailing size ``size``."""
    if arr.ndim < event_ndims:
        shown = "d" if size is None else size
        raise ValueError(f"{where}: {name} must have at least {event_ndims} dimension(s) (..., {shown}); "
                         f"got shape {arr.shape}")
    if size is not None and event_ndims >= 1 and arr.shape[-1] != size:
        raise ValueError(f"{where}: {name} must have shape (..., {size}); got {arr.shape}")


def sum_to_shape(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``g.shape`` from ``shape``."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def as_generator(rng):
    """A ``numpy.random.Generator`` from ``rng`` (a Generator, an int seed or None)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        if isinstance(rng, (bool, np.bool_)):
            raise TypeError("rng must be a numpy.random.Generator, an int seed or None; got a bool")
        if isinstance(rng, (int, np.integer)) and rng < 0:
            raise ValueError(f"rng: an int seed must be non-negative; got {rng}")
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__}")


def as_sample_shape(n, where):
    """``n`` as a tuple sample shape (an int or a tuple of non-negative ints)."""
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        shape = (int(n),)
    elif isinstance(n, (tuple, list)) and all(isinstance(k, (int, np.integer)) for k in n):
        shape = tuple(int(k) for k in n)
    else:
        raise TypeError(f"{where}: the sample size must be an int or a tuple of ints; got {n!r}")
    if any(k < 0 for k in shape):
        raise ValueError(f"{where}: the sample size must be non-negative; got {n!r}")
    check_sample_count(shape, where)
    return shape


def check_sample_count(shape, where, per_sample=1):
    """Raise ``ValueError`` if ``shape`` (of samples of ``per_sample`` numbers each) cannot index one array."""
    total = per_sample
    for k in shape:
        total *= int(k)
    if total > np.iinfo(np.intp).max:
        raise ValueError(f"{where}: the sample size {shape} is too large: {total} numbers exceed the "
                         f"largest array NumPy can index ({np.iinfo(np.intp).max})")
