"""Lazy samples as Dask arrays, the same for any chunking, number of workers and order of execution.

The rows ``0..n`` are cut into fixed units of ``unit`` rows. Unit ``i`` draws its base points from
``numpy.random.SeedSequence(seed).spawn(n_units)[i]`` (built directly as ``SeedSequence(entropy,
spawn_key=(i,))``, which is what ``spawn`` returns), whatever block it falls in; a block draws the units it
overlaps, keeps its rows of them and pushes them through the flow's forward map. Row ``r`` of the result therefore
depends on ``seed``, ``unit`` and ``r`` alone.
"""

import os

import numpy as np

import dask
import dask.array as da

from .._validation import is_dask_array
from ..kernels.backend import resolve_backend
from ._files import store_npy
from ._models import cached_model
from ._score import aligned_context, describe

__all__ = ["UNIT", "sample", "sample_to", "root_seed"]

UNIT = 8192
"""Rows per seeded unit: the grain of reproducibility (blocks may be any size)."""


def root_seed(seed, where):
    """``(entropy, spawn_key)`` of the root ``SeedSequence`` of ``seed`` (an int, a SeedSequence or None)."""
    if isinstance(seed, np.random.Generator):
        raise TypeError(f"{where}: rng must be an int seed, a numpy.random.SeedSequence or None, so that every "
                        f"block derives its own stream from it; a Generator's stream cannot be split across workers "
                        f"reproducibly (pass e.g. rng=0)")
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{where}: rng must be an int seed, a SeedSequence or None; got a bool")
    if seed is None or isinstance(seed, (int, np.integer)):
        if seed is not None and seed < 0:
            raise ValueError(f"{where}: an int seed must be non-negative; got {seed}")
        seed = np.random.SeedSequence(None if seed is None else int(seed))
    if not isinstance(seed, np.random.SeedSequence):
        raise TypeError(f"{where}: rng must be an int seed, a numpy.random.SeedSequence or None; got "
                        f"{type(seed).__name__}")
    # unit i's sequence is SeedSequence(entropy, spawn_key=spawn_key + (i,)): spawn's i-th child of a fresh root
    return seed.entropy, tuple(seed.spawn_key)


def row_chunks(n, chunks, where):
    """``chunks`` (rows per block, or a tuple of block sizes) as a tuple of block sizes summing to ``n``."""
    if isinstance(chunks, (tuple, list)):
        sizes = tuple(chunks[0]) if len(chunks) == 1 and isinstance(chunks[0], (tuple, list)) else tuple(chunks)
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in sizes) or \
                sum(sizes) != n:
            raise ValueError(f"{where}: chunks must be rows per block (a positive int) or block sizes summing to "
                             f"n={n}; got {chunks!r}")
        return tuple(int(c) for c in sizes) or (0,)
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ValueError(f"{where}: chunks must be rows per block (a positive int) or a tuple of block sizes; got "
                         f"{chunks!r}")
    chunks = int(chunks)
    if n == 0:
        return (0,)
    return (chunks,) * (n // chunks) + ((n % chunks,) if n % chunks else ())


def base_rows(flow, start, stop, n, entropy, spawn_key, unit):
    """Base points of rows ``start..stop``: the overlapped units drawn whole from their own seeds, then cut."""
    parts = []
    for u in range(start // unit, (stop - 1) // unit + 1):
        lo = u * unit
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=spawn_key + (u,)))
        z = flow.distribution._sample((min(unit, n - lo),), rng)
        parts.append(z[max(start - lo, 0):stop - lo])
    return np.concatenate(parts)


def push_forward(flow, z, context, backend):
    """``flow``'s forward map of base points ``z`` (with context rows), on the compiled program when it covers the
    flow, as :meth:`TransformedDistribution.sample` does."""
    extra = flow._context_args(context, z, "sample", "the samples")
    program = flow._compiled(backend, "sample")
    with np.errstate(over="ignore", invalid="ignore"):
        if program is not None:
            return program.sample(z.reshape(-1, flow.event_shape[0]), flow._context_rows(extra))[0].reshape(z.shape)
        return flow.bijector._forward(z, *extra)


def _sample_block(payload, n, entropy, spawn_key, unit, backend, context=None, block_info=None):
    start, stop = block_info[None]["array-location"][0]
    model = cached_model(payload)
    flow = getattr(model, "flow_", model)
    if stop <= start:
        return np.empty((0,) + tuple(block_info[None]["chunk-shape"][1:]), dtype=block_info[None]["dtype"])
    x = push_forward(flow, base_rows(flow, start, stop, n, entropy, spawn_key, unit), context, backend)
    if flow is not model:       # a FlowDensity: back to the units of its data
        x = x.astype(np.float64) * model.scale_ + model.mean_
    return x


def sample(model, n, rng=None, chunks=None, *, context=None, backend=None, unit=UNIT):
    """``n`` samples of ``model`` as a lazy Dask array, reproducible for a seed whatever the chunks and workers.

    Parameters
    ----------
    model : TransformedDistribution, FlowDensity, path or bytes
        Travels to the workers as its model file's bytes, rebuilt once per worker.
    n : int
        Number of samples (non-negative).
    rng : int, numpy.random.SeedSequence or None
        The root seed (None: fresh entropy). Unit ``i`` of ``unit`` rows draws
        from ``SeedSequence(rng).spawn(...)[i]``; a Generator is refused (its
        stream cannot be split reproducibly).
    chunks : int or tuple of int, optional
        Rows per block (default ``16 * unit``), or the block sizes.
    context : dask.array.Array or array, optional
        For a conditional flow: one row per sample, or one row for all.
    backend : {"numpy", "numba"}, optional
        Default :func:`nflow_np.get_backend` (``"cuda"`` draws on the GPU's own
        stream, which is not split by units: refused here).
    unit : int
        Rows per seeded unit (default :data:`UNIT`); the samples depend on it.

    Returns
    -------
    dask.array.Array, shape (n,) + event_shape
    """
    where = "nflow_np.dask.sample"
    payload, info = describe(model, where)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{where}: n must be a non-negative int; got {n!r}")
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or unit < 1:
        raise ValueError(f"{where}: unit must be a positive int; got {unit!r}")
    n, unit = int(n), int(unit)
    entropy, spawn_key = root_seed(rng, where)
    name = resolve_backend(backend, where)
    if name == "cuda":
        raise ValueError(f"{where}: backend='cuda' draws from the GPU's own random stream, which is not split into "
                         f"seeded units; use backend='numba' or 'numpy'")
    blocks = row_chunks(n, 16 * unit if chunks is None else chunks, where)
    if info.event_shape is None:      # a file or its bytes: rebuild here once to learn the event shape
        built = cached_model(payload)
        event_shape = tuple(getattr(built, "flow_", built).event_shape)
        context_size = getattr(built, "context_size", 0)
    else:
        event_shape, context_size = info.event_shape, info.context_size
    if info.kind == "estimator" and context is not None:
        raise ValueError(f"{where}: a FlowDensity takes no context")
    if bool(context_size) != (context is not None):
        raise ValueError(f"{where}: the flow is conditional on a context of size {context_size}; pass context= one "
                         f"row per sample or one row for all" if context_size else
                         f"{where}: the flow is unconditional (built without a context), so it takes no context")
    shipped = dask.delayed(payload, pure=True, traverse=False)
    out_chunks = (blocks,) + tuple((s,) for s in event_shape)
    args = [shipped, n, entropy, spawn_key, unit, name]
    kwargs = {}
    arrays = []
    if context is not None:
        template = da.empty((n,), chunks=(blocks,))
        ctx = aligned_context(context, template, context_size, where)
        if is_dask_array(ctx):
            arrays = [ctx]
        else:
            kwargs["context"] = ctx
    meta = np.empty((0,) * len(out_chunks), dtype=info.dtype)
    if arrays:
        shape = {"drop_axis": 1} if len(out_chunks) == 1 else \
            {"new_axis": list(range(2, len(out_chunks)))} if len(out_chunks) > 2 else {}
        return da.map_blocks(_sample_with_context, *arrays, *args, chunks=out_chunks, dtype=info.dtype, meta=meta,
                             token="nflow-np-sample", **shape)
    return da.map_blocks(_sample_block, *args, chunks=out_chunks, dtype=info.dtype, meta=meta,
                         token="nflow-np-sample", **kwargs)


def _sample_with_context(context, payload, n, entropy, spawn_key, unit, backend, block_info=None):
    info = {None: block_info[None]}
    return _sample_block(payload, n, entropy, spawn_key, unit, backend, context, block_info=info)


def sample_to(path, model, n, rng=None, chunks=None, *, backend=None, unit=UNIT, compute=True):
    """Write ``n`` samples to a ``.npy`` file or a zarr store, block by block, with bounded memory per worker.

    Parameters
    ----------
    path : str or os.PathLike
        Ending in ``.npy`` (one file, each block written through a memory map)
        or ``.zarr`` (a zarr store; needs the ``zarr`` package). Every worker
        must see it (one machine or a shared file system).
    model, n, rng, chunks, backend, unit
        As for :func:`sample`; the file holds exactly what :func:`sample`
        returns.
    compute : bool
        False returns the delayed write instead of running it.

    Returns
    -------
    str or dask.delayed.Delayed
        The path written (or the delayed write).
    """
    where = "nflow_np.dask.sample_to"
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    x = sample(model, n, rng, chunks, backend=backend, unit=unit)
    if path.endswith(".npy"):
        stored = store_npy(x, path, compute=False)
    elif path.rstrip("/").endswith(".zarr"):
        stored = da.to_zarr(x, path, overwrite=True, compute=False)
    else:
        raise ValueError(f"{where}: path must end in .npy or .zarr; got {path!r}")
    if not compute:
        return stored
    dask.compute(stored)
    return path
