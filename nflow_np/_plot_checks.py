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


def _log_density_fn(dist, where, context=None):
    """``f(points) -> log-densities`` of a distribution, a fitted FlowDensity or a callable, at ``context`` (one
    context row for every point) when given; and the dtype to build the grid in."""
    if hasattr(dist, "score_samples") and hasattr(dist, "n_features_in_"):
        return _estimator_density(dist, where, context)
    event_shape = getattr(dist, "event_shape", None)
    if event_shape is not None and tuple(event_shape) != (2,):
        raise ValueError(f"{where}: dist must be a density over 2-D points (event shape (2,)); "
                         f"got event shape {tuple(event_shape)}")
    width = getattr(dist, "context_size", 0)
    width = int(width) if isinstance(width, (int, np.integer)) else 0
    if hasattr(dist, "log_prob"):
        if width and context is None:
            raise ValueError(f"{where}: dist is conditional (a context of size {width}); draw one context's density "
                             f"by passing context= one row of {width} value(s)")
        if not width and context is not None:
            raise ValueError(f"{where}: dist is unconditional (built without a context), so it takes no context")
        if context is None:
            return dist.log_prob
        row = _context_row(context, width, where)
        return lambda x: dist.log_prob(x, context=np.broadcast_to(row.astype(x.dtype), (len(x), width)))
    if callable(dist):
        if context is None:
            return dist
        row = np.asarray(context, dtype=np.float64)
        return lambda x: dist(x, np.broadcast_to(row, (len(x),) + row.shape[-1:]))
    raise TypeError(f"{where}: dist must have a log_prob method or be a callable log-density; "
                    f"got {type(dist).__name__}")


def _estimator_density(est, where, context):
    if not hasattr(est, "flow_"):
        raise ValueError(f"{where}: the {type(est).__name__} is not fitted; fit it before drawing its density")
    if est.n_features_in_ != 2:
        raise ValueError(f"{where}: dist must be a density over 2-D points; the {type(est).__name__} was fitted on "
                         f"{est.n_features_in_} feature(s)")
    width = getattr(est, "n_context_in_", 0)
    if width and context is None:
        raise ValueError(f"{where}: the {type(est).__name__} is conditional (a context of {width} column(s)); "
                         f"draw one context's density by passing context= one row of {width} value(s)")
    if not width:
        if context is not None:
            raise ValueError(f"{where}: the {type(est).__name__} is unconditional, so it takes no context")
        return lambda x: est.score_samples(x)
    row = _context_row(context, width, where)
    return lambda x: est.score_samples(x, np.broadcast_to(row, (len(x), width)))


def _context_row(context, width, where):
    row = np.asarray(context, dtype=np.float64).reshape(-1)
    if row.shape != (width,):
        raise ValueError(f"{where}: context must be one row of {width} value(s) (the density is drawn at one "
                         f"context); got shape {np.shape(context)}")
    if not np.isfinite(row).all():
        raise ValueError(f"{where}: context must be finite; got {row.tolist()}")
    return row


def _context_colours(context, n, where, argname):
    """How ``context`` (one value or row per point) colours ``n`` points: ``("category", codes, names)`` for a
    one-hot context, ``("value", values, None)`` for a one-column one."""
    arr = np.asarray(context, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"{where}: {argname} must hold one context value or row per point ({n} of them); got shape "
                         f"{np.shape(context)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: {argname} must be finite")
    if arr.shape[1] == 1:
        return "value", arr[:, 0], None
    if not (np.isin(arr, (0.0, 1.0)).all() and (arr.sum(axis=1) == 1.0).all()):
        raise ValueError(f"{where}: a context of several columns colours the points by category and must be "
                         f"one-hot (one 1 per row); pass one column to colour by its value")
    return "category", arr.argmax(axis=1), arr.shape[1]


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


def _shades(context, data, samples, where):
    """The colouring of data and samples by ``context`` (one array for both, or a pair), or (None, None)."""
    if context is None:
        return None, None
    if data.ndim == 1:
        raise ValueError(f"{where}: context colours 2-D points; these are 1-D")
    if isinstance(context, (tuple, list)) and len(context) == 2 and np.ndim(context[0]) >= 1 and \
            len(context[0]) == len(data) and len(context[1]) == len(samples):
        pair = _context_colours(context[0], len(data), where, "context[0]"), \
            _context_colours(context[1], len(samples), where, "context[1]")
    elif len(data) == len(samples):
        shade = _context_colours(context, len(data), where, "context")
        pair = shade, shade
    else:
        raise ValueError(f"{where}: data ({len(data)} points) and samples ({len(samples)}) differ in length: pass "
                         f"context as a pair (data_context, samples_context)")
    if pair[0][0] != pair[1][0] or pair[0][0] == "category" and pair[0][2] != pair[1][2]:
        raise ValueError(f"{where}: the data's and the samples' contexts must be of the same kind and width")
    if pair[0][0] == "category":
        return pair
    both = np.concatenate([pair[0][1], pair[1][1]])
    limits = (float(both.min()), float(both.max()))
    return ("value", pair[0][1], limits), ("value", pair[1][1], limits)
