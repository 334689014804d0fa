"""Helpers of :class:`nflow_np.estimator.FlowDensity`: argument checks, seeds, histories of resumed fits, and the
standardization."""

import copy
import numbers

import numpy as np


def _as_generator(random_state, where):
    """A NumPy ``Generator`` from None, an int seed, a Generator or a legacy ``RandomState``."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return np.random.default_rng(random_state)
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)):
        if random_state < 0:
            raise ValueError(f"{where}: random_state must be a non-negative int; got {random_state}")
        return np.random.default_rng(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        # draw a seed from it, so that repeated calls advance it as scikit-learn's do
        return np.random.default_rng(random_state.randint(0, 2 ** 31 - 1))
    raise TypeError(f"{where}: random_state must be None, an int, a numpy Generator or RandomState; "
                    f"got {type(random_state).__name__}")


def _is_sparse(X):
    # scipy.sparse matrices and arrays, recognized without importing SciPy
    return type(X).__module__.startswith("scipy.sparse") or (hasattr(X, "tocsr") and hasattr(X, "nnz"))


def _is_seed(random_state):
    """Whether ``random_state`` is an int seed (the one kind that replays the same draws on every call)."""
    return isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_))


def _check_int(value, name, minimum, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"FlowDensity: {name} must be {expected}; got {value!r}")
    return int(value)


def _equal(a, b):
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _finite_moments(state):
    return all(np.isfinite(array).all() for key in ("m", "v") for array in state[key].values())


def _merge_histories(previous, current):
    """One History for a resumed fit: the earlier epochs followed by the new ones."""
    if previous is None or current is None:
        return current if current is not None else previous
    offset = previous.epochs
    merged = copy.copy(current)
    merged.train_loss = list(previous.train_loss) + list(current.train_loss)
    merged.val_loss = list(previous.val_loss) + list(current.val_loss)
    merged.averaged = list(getattr(previous, "averaged", [])) + list(getattr(current, "averaged", []))
    merged.lr = list(previous.lr) + list(current.lr)
    merged.steps = previous.steps + current.steps
    merged.rejected_steps = previous.rejected_steps + current.rejected_steps
    merged.diverged_steps = previous.diverged_steps + current.diverged_steps
    merged.best_epoch = current.best_epoch + offset if current.best_epoch >= 0 else previous.best_epoch
    merged.wall_time = previous.wall_time + current.wall_time
    return merged


def _column_moments(X):
    """Per-column mean and standard deviation of a checked 2-D float64 ``X``, a constant column's scale 1.

    A column whose squares (or sum) overflow, values beyond about 1e154, is
    measured divided by its largest magnitude, so that its standard deviation
    comes out finite instead of inf.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
    wide = ~(np.isfinite(mean) & np.isfinite(scale))
    if wide.any():
        peak = np.abs(X[:, wide]).max(axis=0)
        shrunk = X[:, wide] / peak
        mean[wide] = shrunk.mean(axis=0) * peak
        scale[wide] = shrunk.std(axis=0) * peak
    # a constant column gets scale 1 (as StandardScaler does) instead of a division by zero
    scale[scale == 0.0] = 1.0
    return mean, scale


def _standardized(X, mean, scale, where):
    """``(X - mean) / scale``; a column whose values lie too far apart for that difference (beyond float64's range)
    is refused by name."""
    with np.errstate(over="ignore", invalid="ignore"):
        Z = (X - mean) / scale
    finite = np.isfinite(Z)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"{where}: column {col} cannot be standardized: row {row} ({X[row, col]:.3g}) lies farther "
                         f"from the column's mean ({mean[col]:.3g}) than float64 can hold; rescale that column")
    return Z


def _checked_array(X, where, argname="X", allow_1d=False):
    """``X`` as a finite float64 array, 2-D (1-D too with ``allow_1d``), scikit-learn's ``validate_data``
    conventions; ``ValueError``/``TypeError`` naming ``where`` and ``argname`` otherwise."""
    if _is_sparse(X):
        raise TypeError(f"{where}: sparse input is not supported (a flow needs dense data); "
                        f"convert it with {argname}.toarray()")
    arr = np.asarray(X)
    if arr.dtype.kind == "c":
        raise ValueError(f"{where}: Complex data not supported; got {arr.dtype}")
    if arr.dtype.kind not in "fiub":
        # strings or objects: float() explains what cannot be converted, after which method and argument
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {argname} must hold numbers; {exc}") from None
    arr = np.asarray(arr, dtype=np.float64)
    if allow_1d and arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        if allow_1d:
            raise ValueError(f"{where}: {argname} must be a 1-D or 2-D array (one context row per sample); got "
                             f"{arr.ndim}D (shape {arr.shape})")
        raise ValueError(f"{where}: Expected 2D array, got {arr.ndim}D array instead (shape {arr.shape}). "
                         f"Reshape your data either using X.reshape(-1, 1) if your data has a single feature "
                         f"or X.reshape(1, -1) if it contains a single sample.")
    n, d = arr.shape
    if d == 0:
        raise ValueError(f"{where}: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if n == 0:
        raise ValueError(f"{where}: 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        what = "a density is defined only at finite points" if argname == "X" else \
            "a context must be finite (encode a missing value as a column of its own)"
        raise ValueError(f"{where}: Input {argname} contains NaN or infinity ({arr[row, col]} at row {row}, column "
                         f"{col}); {what}")
    return arr


def _context_rows(y, n, width, where):
    """The context of ``sample``: one row (shape ``(k,)``, ``(1, k)``, or a scalar when ``k == 1``) repeated for
    the ``n`` samples, or ``n`` rows (shape ``(n, k)``, or ``(n,)`` when ``k == 1``), as an ``(n, k)`` array."""
    arr = np.asarray(y, dtype=np.float64) if not _is_sparse(y) else y
    if _is_sparse(arr):
        raise TypeError(f"{where}: sparse y is not supported; convert it with y.toarray()")
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        # (k,) is one row; with a single context feature, (n,) is one value per sample
        arr = arr[None, :] if len(arr) == width and (width > 1 or len(arr) == 1) else arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] not in (1, n):
        raise ValueError(f"{where}: y must be one context row of {width} value(s) (for every sample) or {n} rows of "
                         f"{width}, shape ({n}, {width}); got shape {np.shape(y)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: y contains NaN or infinity; a context must be finite")
    return np.broadcast_to(arr, (n, width))
