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
