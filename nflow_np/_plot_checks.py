"""Argument checks and grid evaluation for :mod:`nflow_np.plot` (NumPy only; matplotlib is not imported here)."""

import numpy as np


def _positive_int(value, where, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}; got {value}")
    return int(value)


def _axes_list(axes, needed, where, argname):
    """Flatten user-given axes (one Axes, a list or an ndarray of them) and check there are enough."""
    flat = list(np.asarray(axes, dtype=object).ravel())
    if len(flat) < needed:
        raise ValueError(f"{where}: {argname} must hold at least {needed} axes; got {len(flat)}")
    return flat


def _check_bounds(bounds, where):
    try:
        box = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bounds must be ((xmin, xmax), (ymin, ymax)); got {bounds!r}") from None
    if box.shape != (2, 2):
        raise ValueError(f"{where}: bounds must be ((xmin, xmax), (ymin, ymax)); got shape {box.shape}")
    if not np.all(np.isfinite(box)):
        raise ValueError(f"{where}: bounds must be finite; got {box.tolist()}")
    for axis, (lo, hi) in zip("xy", box):
        if not lo < hi:
            raise ValueError(f"{where}: bounds need {axis}min < {axis}max; got ({lo}, {hi})")
    return box


def _check_grid(grid, where):
    sizes = (grid, grid) if np.ndim(grid) == 0 else tuple(grid)
    if len(sizes) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 2
                                  for s in sizes):
        raise ValueError(f"{where}: grid must be an int >= 2 or a pair (nx, ny) of them; got {grid!r}")
    return int(sizes[0]), int(sizes[1])


def _log_density_fn(dist, where):
    event_shape = getattr(dist, "event_shape", None)
    if event_shape is not None and tuple(event_shape) != (2,):
        raise ValueError(f"{where}: dist must be a density over 2-D points (event shape (2,)); "
                         f"got event shape {tuple(event_shape)}")
    context = getattr(dist, "context_size", 0)
    if isinstance(context, (int, np.integer)) and context > 0:
        raise ValueError(f"{where}: dist is conditional (a context of size {context}); draw one context's density "
                         f"by passing lambda x: flow.log_prob(x, context=c)")
    if hasattr(dist, "log_prob"):
        return dist.log_prob
    if callable(dist):
        return dist
    raise TypeError(f"{where}: dist must have a log_prob method or be a callable log-density; "
                    f"got {type(dist).__name__}")


def _as_points(arr, where, argname):
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 2)):
        raise ValueError(f"{where}: {argname} must have shape (n,), (n, 1) or (n, 2); got {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{where}: {argname} is empty")
    return arr


def _evaluate_on_grid(log_density, points, chunk_size, where):
    out = np.empty(len(points), dtype=np.float64)
    # Chunks bound the memory a deep flow's intermediate arrays take on a fine grid.
    for start in range(0, len(points), chunk_size):
        chunk = points[start:start + chunk_size]
        try:
            values = np.asarray(log_density(chunk), dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{where}: log_prob failed on the grid; are the bounds inside the density's "
                             f"support? ({exc})") from exc
        if values.shape != (len(chunk),):
            raise ValueError(f"{where}: log_prob must return one value per 2-D point, shape ({len(chunk)},); "
                             f"got {values.shape}")
        out[start:start + len(chunk)] = values
    return out
