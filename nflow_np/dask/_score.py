"""Lazy log-densities of Dask arrays: one task per block of rows, the model rebuilt once per worker."""

import numpy as np

import dask
import dask.array as da

from .._validation import is_dask_array
from ..kernels.backend import resolve_backend
from ._models import cached_model, payload_of

__all__ = ["log_prob", "score_samples", "score"]


class _Described:
    """What the driver knows of a model before any worker rebuilds it: its kind, output dtype, event shape and
    context size (None where only a worker will know: a model given as a file or its bytes)."""

    def __init__(self, model, payload):
        from ..estimator import FlowDensity
        if isinstance(model, FlowDensity):
            model._check_fitted("score_samples")
            self.kind, self.dtype = "estimator", np.dtype(np.float64)
            self.event_shape, self.context_size = (int(model.n_features_in_),), 0
        elif hasattr(model, "event_shape"):
            self.kind, self.dtype = "flow", np.dtype(model.dtype)
            self.event_shape = tuple(model.event_shape)
            self.context_size = int(getattr(model, "context_size", 0))
        else:       # a file or its bytes: a glimpse of the spec for the output dtype; the workers check the file
            spec = payload.peek_spec() or {}
            self.kind = "estimator" if spec.get("estimator") is not None else "flow"
            dtypes = {record["dtype"] for record in _records(spec.get("root"))}
            self.dtype = np.dtype(np.float64) if self.kind == "estimator" or len(dtypes) != 1 else np.dtype(
                dtypes.pop())
            self.event_shape, self.context_size = None, None


def _records(node):
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("key"), str) and isinstance(item.get("dtype"), str):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def describe(model, where):
    """``(payload, description)`` of ``model`` for building a graph."""
    payload = payload_of(model, where)
    built = model if hasattr(model, "event_shape") or hasattr(model, "score_samples") else None
    return payload, _Described(built, payload)


def check_rows(x, event_shape, where, argname="x"):
    """``x`` as a Dask array of rows ``(n, *event_shape)``, chunked along the rows only."""
    if not is_dask_array(x):
        raise TypeError(f"{where}: {argname} must be a dask.array.Array; got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{where}: {argname} must hold numbers; got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{where}: {argname} must hold rows of points, shape (n, ...); got a 0-d array")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"{where}: {argname} must have shape (n, {', '.join(map(str, event_shape))}) for event "
                         f"shape {tuple(event_shape)}; got {x.shape}")
    split = [axis for axis in range(1, x.ndim) if len(x.chunks[axis]) != 1]
    if split:
        axis = split[0]
        raise ValueError(f"{where}: {argname} is chunked along the event axis {axis} (chunks {x.chunks[axis]}); "
                         f"each block must hold whole points: chunk the rows only, e.g. "
                         f"{argname}.rechunk({{{axis}: -1}})")
    if any(np.isnan(c) for c in x.chunks[0]):
        raise ValueError(f"{where}: {argname} has unknown row chunk sizes; call {argname}.compute_chunk_sizes() "
                         f"first")
    return x


def aligned_context(context, x, context_size, where):
    """The context as an argument of the blocks of ``x``: None, one row for all (a small ndarray) or a Dask array
    chunked like the rows of ``x``."""
    if context is None:
        return None
    if not is_dask_array(context):
        ctx = np.asarray(context)
        if ctx.ndim <= 1 or ctx.shape[0] == 1:
            return ctx          # one row for all: every block takes it whole
        if ctx.shape[0] != x.shape[0]:
            raise ValueError(f"{where}: context has {ctx.shape[0]} rows but x has {x.shape[0]} (one context row "
                             f"per point, or one row for all)")
        context = da.from_array(ctx, chunks=(x.chunks[0],) + tuple((s,) for s in ctx.shape[1:]))
    if context.ndim != 2 or (context_size is not None and context.shape[1] != context_size):
        raise ValueError(f"{where}: context must have shape (n, {context_size if context_size else 'c'}); got "
                         f"{context.shape}")
    if context.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: context has {context.shape[0]} rows but x has {x.shape[0]} (one context row "
                         f"per point)")
    # the context's row chunks follow x's, so that block i of one meets block i of the other
    return context.rechunk((x.chunks[0], -1))


def _score_block(x, payload, method, backend, context=None):
    model = cached_model(payload)
    if method == "score_samples":
        return model.score_samples(x)
    if not hasattr(model, "bijector"):      # a plain distribution: no context, no compiled program
        return model.log_prob(x)
    return model.log_prob(x, context=context, backend=backend)


def _lazy(model, x, context, backend, method, where):
    payload, info = describe(model, where)
    x = check_rows(x, info.event_shape, where)
    if info.kind == "estimator" and method == "log_prob":
        method = "score_samples"
    if info.kind == "estimator" and context is not None:
        raise ValueError(f"{where}: a FlowDensity takes no context")
    if info.context_size == 0 and context is not None:
        raise ValueError(f"{where}: the flow is unconditional (built without a context), so it takes no context")
    if info.context_size and context is None:
        raise ValueError(f"{where}: the flow is conditional on a context of size {info.context_size}; pass "
                         f"context= a Dask array (n, {info.context_size}) aligned with x, or one row for all")
    backend = resolve_backend(backend, where) if method == "log_prob" else None
    shipped = dask.delayed(payload, pure=True, traverse=False)
    args = [x, shipped, method, backend]
    if context is not None:
        ctx = aligned_context(context, x, info.context_size, where)
        args.append(ctx)
    drop = tuple(range(1, x.ndim))
    return da.map_blocks(_score_block, *args, drop_axis=drop, dtype=info.dtype,
                         meta=np.empty((0,), dtype=info.dtype), token=f"nflow-np-{method.replace('_', '-')}")


def log_prob(model, x, context=None, *, backend=None):
    """Lazy log-densities of the rows of a Dask array.

    Parameters
    ----------
    model : TransformedDistribution, FlowDensity, path or bytes
        A flow, a fitted ``FlowDensity`` (its ``score_samples``), a model
        file's path or its bytes. It travels to the workers as the bytes of
        its model file and is rebuilt once per worker process.
    x : dask.array.Array, shape (n,) + event_shape
        Chunked along the rows only (each block holds whole points).
    context : dask.array.Array or array, optional
        For a conditional flow: one row per point (rechunked to the row
        chunks of ``x``) or one row for all.
    backend : {"numpy", "numba", "cuda"}, optional
        As in :meth:`TransformedDistribution.log_prob`; resolved here (default
        :func:`nflow_np.get_backend`) and used on every worker.

    Returns
    -------
    dask.array.Array, shape (n,)
        Lazy; one task per block of ``x``. Each value equals the in-memory
        ``log_prob`` of its row, bit for bit.
    """
    return _lazy(model, x, context, backend, "log_prob", "nflow_np.dask.log_prob")


def score_samples(estimator, X):
    """Lazy :meth:`FlowDensity.score_samples` of a Dask array ``X`` of shape ``(n, n_features)``."""
    return _lazy(estimator, X, None, None, "score_samples", "FlowDensity.score_samples")


def score(estimator, X):
    """Lazy :meth:`FlowDensity.score`: a 0-d Dask array, the sum of :func:`score_samples` (``float()`` computes it)."""
    return score_samples(estimator, X).sum()
