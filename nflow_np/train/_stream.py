"""``fit`` on data larger than memory: blocks of rows streamed through a shuffle buffer.

Data that is a ``dask.array.Array``, an ``np.memmap`` or a zarr array (or any of them wrapped in :class:`Stream`)
is never loaded whole. Each epoch visits its blocks in an order drawn from ``rng``; the blocks fill a buffer of
``buffer_rows`` rows, whose rows are shuffled from ``rng`` and cut into batches, the rows left over after the last
full batch carried into the next buffer. Each filled buffer runs through the steps :func:`nflow_np.train.fit` runs
on an in-memory array (one compiled call per buffer on the Numba and CUDA backends, the guarded NumPy steps
otherwise), so peak memory is the buffer (about twice it while it is shuffled), not the data.

With ``validation_split``, each block holds out its own rows, drawn once per fit from a seed that ``rng`` gives,
so the held-out set is the same in every epoch without an index over the whole data; it is scored block by block.
"""

import numpy as np

from .._validation import as_float_array, is_dask_array
from ._average import ParameterAverage
from ._guard import Snapshot, Watch
from .loops import _begin, _compiled_epoch, _compiled_trainer, _numpy_epoch, modules, run_epochs, run_fit

__all__ = ["Stream", "streams"]

_BUFFER_BYTES = 64 << 20
"""Default shuffle buffer: about this many bytes of rows."""
_BLOCK_ROWS = 1 << 16
"""Default rows per block read from a memory map (a zarr array's own row chunks when it has them)."""


def _is_zarr(data):
    return type(data).__module__.startswith("zarr")


def streams(data):
    """Whether :func:`fit` streams ``data`` (a :class:`Stream`, Dask array, ``np.memmap`` or zarr array)."""
    return isinstance(data, (Stream, np.memmap)) or is_dask_array(data) or _is_zarr(data)


class Stream:
    """Rows read block by block: a Dask array, an ``np.memmap``, a zarr array or an ndarray.

    Parameters
    ----------
    data : dask.array.Array, np.memmap, zarr.Array or ndarray, shape (n, ...)
    block_rows : int, optional
        Rows per block read (a Dask array's own row chunks when None; a zarr
        array's chunks; else 65536).
    buffer_rows : int, optional
        Rows of the shuffle buffer (default: about 64 MB of rows, at least
        one batch). Peak memory is about twice the buffer.

    :func:`nflow_np.train.fit` streams a ``Stream`` (and a bare Dask array,
    memory map or zarr array, with the defaults).
    """

    def __init__(self, data, block_rows=None, buffer_rows=None):
        if isinstance(data, Stream):
            data = data.data
        if not (streams(data) or isinstance(data, np.ndarray)):
            raise TypeError(f"Stream: data must be a dask array, np.memmap, zarr array or ndarray; got "
                            f"{type(data).__name__}")
        if len(data.shape) < 1:
            raise ValueError(f"Stream: data must hold rows, shape (n, ...); got shape {data.shape}")
        for name, value in (("block_rows", block_rows), ("buffer_rows", buffer_rows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
                                      value < 1):
                raise ValueError(f"Stream: {name} must be a positive int or None; got {value!r}")
        self.data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.buffer_rows = None if buffer_rows is None else int(buffer_rows)
        if block_rows is None and is_dask_array(data):
            if any(np.isnan(c) for c in data.chunks[0]):
                raise ValueError("Stream: the Dask array has unknown row chunk sizes; call compute_chunk_sizes()")
            sizes = [int(c) for c in data.chunks[0]]
            self.bounds = np.cumsum([0] + sizes)
        else:
            step = int(block_rows or (data.chunks[0] if _is_zarr(data) else _BLOCK_ROWS))
            self.bounds = np.append(np.arange(0, self.shape[0], step), self.shape[0])

    def __len__(self):
        return self.shape[0]

    @property
    def blocks(self):
        return len(self.bounds) - 1

    def read(self, start, stop):
        """Rows ``start..stop`` as an ndarray (a Dask array's computed by its scheduler)."""
        part = self.data[start:stop]
        return np.asarray(part.compute() if is_dask_array(part) else part)

    def block(self, i):
        return self.read(int(self.bounds[i]), int(self.bounds[i + 1]))

    def aligned(self, other, where, argname):
        """``other`` (one row per data row) as a Stream with these blocks."""
        if other is None:
            return None
        if len(other.shape) < 1 or other.shape[0] != self.shape[0]:
            raise ValueError(f"{where}: {argname} must have one row per data row ({self.shape[0]}); got shape "
                             f"{tuple(other.shape)}")
        aligned = Stream(other, block_rows=max(1, self.shape[0]))
        aligned.bounds = self.bounds        # block i of one meets block i of the other
        return aligned


class _Source:
    """The training (or validation) rows of a Stream and its context: blocks, each less its held-out rows."""

    def __init__(self, stream, context, dtype, masks=None, keep=True):
        self.stream, self.context, self.dtype = stream, context, dtype
        self.masks, self.keep = masks, keep     # masks(i): held-out rows of block i; keep: the rows kept are those

    def rows(self):
        return sum(self._count(i) for i in range(self.stream.blocks))

    def _count(self, i):
        size = int(self.stream.bounds[i + 1] - self.stream.bounds[i])
        if self.masks is None:
            return size if self.keep else 0
        held = int(self.masks(i).sum())
        return size - held if self.keep else held

    def block(self, i):
        """``(rows, context rows or None)`` of block ``i``, checked as ``fit`` checks in-memory data."""
        start = int(self.stream.bounds[i])
        x = self.stream.block(i)
        try:
            x = as_float_array(x, self.dtype, "fit", "data")
        except ValueError as exc:
            raise ValueError(f"{exc} (in rows {start}..{int(self.stream.bounds[i + 1])} of the streamed data)") \
                from None
        c = None if self.context is None else as_float_array(self.context.block(i), self.dtype, "fit", "context")
        if self.masks is not None:
            take = self.masks(i) != self.keep
            x = x[take]
            c = None if c is None else c[take]
        return x, c


def _held_out(stream, fraction, seed):
    """``masks(i)``: the held-out rows of block ``i`` (each row with probability ``fraction``), the same every call."""
    def masks(i):
        size = int(stream.bounds[i + 1] - stream.bounds[i])
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(i),)))
        return rng.random(size) < fraction
    return masks


def _buffers(source, rng, buffer_rows, batch_size):
    """Shuffled buffers of whole batches (the last one of the epoch may end in a short batch)."""
    carry_x, carry_c, parts, filled = None, None, [], 0
    for i in rng.permutation(source.stream.blocks):
        x, c = source.block(int(i))
        if len(x):
            parts.append((x, c))
            filled += len(x)
        if filled >= buffer_rows:
            carry_x, carry_c, ready = _shuffle(parts, carry_x, carry_c, rng, batch_size, last=False)
            parts, filled = [], 0
            yield ready
    _, _, ready = _shuffle(parts, carry_x, carry_c, rng, batch_size, last=True)
    if len(ready[0]):
        yield ready


def _shuffle(parts, carry_x, carry_c, rng, batch_size, last):
    xs = ([] if carry_x is None else [carry_x]) + [x for x, _ in parts]
    x = np.concatenate(xs) if xs else np.empty((0,))
    c = None
    if parts and parts[0][1] is not None or carry_c is not None:
        cs = ([] if carry_c is None else [carry_c]) + [c for _, c in parts]
        c = np.concatenate(cs)
    order = rng.permutation(len(x))
    x = np.ascontiguousarray(x[order])
    c = None if c is None else np.ascontiguousarray(c[order])
    used = len(x) if last else len(x) - len(x) % batch_size
    rest_x, rest_c = x[used:].copy(), None if c is None else c[used:].copy()
    return rest_x, rest_c, (x[:used], None if c is None else c[:used])


def _stream_nll(flow, source, batch_size):
    """Mean NLL of a source's rows, block by block; inf where the flow cannot map a point back."""
    total, count = 0.0, 0
    try:
        for i in range(source.stream.blocks):
            x, c = source.block(i)
            for s in range(0, len(x), batch_size):
                total -= float(flow.log_prob(x[s:s + batch_size], context=None if c is None else
                                             c[s:s + batch_size]).sum())
            count += len(x)
    except (ValueError, FloatingPointError) as exc:
        if "streamed data" in str(exc):
            raise
        return np.inf
    return total / count if count else np.nan


def _as_stream(data, where, argname):
    stream = data if isinstance(data, Stream) else Stream(data)
    if len(stream) == 0:
        raise ValueError(f"{where}: {argname} has no rows")
    return stream


def fit_streamed(flow, data, epochs, batch_size, lr, optimizer, validation_data, validation_split, patience, rng,
                 callback, progress, clip_norm, context, validation_context, schedule=None, average=0.0):
    """:func:`nflow_np.train.fit` for streamed data (arguments checked as there; the backend already set)."""
    from .._validation import as_generator
    rng = as_generator(rng)
    stream = _as_stream(data, "fit", "data")
    if stream.dtype.kind not in "fiub":
        raise TypeError(f"fit: data must hold numbers; got dtype {stream.dtype}")
    if stream.dtype.kind == "f" and stream.dtype != flow.dtype:
        raise TypeError(f"fit: data is {stream.dtype} but the flow is {flow.dtype}; dtypes are never mixed "
                        f"silently: convert the data (or build the flow with dtype={stream.dtype.name})")
    flow._prepare(np.zeros((1,) + stream.shape[1:], dtype=flow.dtype), "fit")
    ctx = _context_stream(flow, context, stream, "context")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"fit: batch_size must be a positive int; got {batch_size!r}")
    masks = None
    if validation_data is None and validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"fit: validation_split must lie in (0, 1); got {validation_split}")
        masks = _held_out(stream, validation_split, int(rng.integers(2 ** 63)))
    train = _Source(stream, ctx, flow.dtype, masks, keep=True)
    valid = None
    if masks is not None:
        valid = _Source(stream, ctx, flow.dtype, masks, keep=False)
    elif validation_data is not None:
        vstream = _as_stream(validation_data, "fit", "validation_data")
        if vstream.shape[1:] != stream.shape[1:]:
            raise ValueError(f"fit: validation_data must have shape (m, {', '.join(map(str, stream.shape[1:]))}) "
                             f"like the rows of data; got {vstream.shape}")
        vctx = _context_stream(flow, validation_context, vstream, "validation_context")
        valid = _Source(vstream, vctx, flow.dtype)
    n_train = train.rows() if masks is not None else len(stream)
    if n_train == 0:
        raise ValueError("fit: no training data")
    batch_size = min(int(batch_size), n_train)
    buffer_rows = stream.buffer_rows or max(batch_size, _BUFFER_BYTES // max(1, flow.dtype.itemsize *
                                                                               int(np.prod(stream.shape[1:]))))
    optimizer, history, snapshot, best = _begin(flow, optimizer, lr, clip_norm, "fit")
    if schedule is not None:
        schedule.begin(optimizer, epochs)
    initial = Snapshot(best.params)
    initialized = [(m, m.initialized) for m in modules(flow) if hasattr(m, "initialized")]
    trainer = _compiled_trainer(flow, optimizer, batch_size)
    watch = Watch()
    averaged = ParameterAverage(average, flow, trainer) if average and valid is not None else None
    return run_fit(flow, history, best, initial, initialized, progress,
                   lambda: _epochs(flow, optimizer, trainer, train, valid, epochs, batch_size, buffer_rows, patience,
                                   rng, callback, progress, history, snapshot, best, watch, schedule, averaged),
                   lambda: "")


def _context_stream(flow, context, stream, argname):
    """``context`` served per block of ``stream``: None, one row for all, or one row per data row."""
    first = None
    if context is not None:
        if not streams(context):
            context = np.asarray(context)
        first = context if context.ndim <= 1 else Stream(context, block_rows=max(1, len(stream))).read(0, 1)
    # the flow's own checks: a context where none is taken, none where one is needed, the wrong width
    flow._prepare_context(first, np.zeros((1,) + stream.shape[1:], dtype=flow.dtype), "fit", "data",
                          where=f"fit ({argname})")
    if context is None:
        return None
    if context.ndim <= 1 or context.shape[0] == 1 and len(stream) != 1:
        return _OneRow(np.asarray(first), stream)
    return stream.aligned(context, "fit", argname)


class _OneRow:
    """One context row for every data row, served per block like an aligned stream."""

    def __init__(self, row, stream):
        self.row, self.stream = row.reshape(-1), stream

    def block(self, i):
        size = int(self.stream.bounds[i + 1] - self.stream.bounds[i])
        return np.broadcast_to(self.row, (size, len(self.row)))


def _epochs(flow, optimizer, trainer, train, valid, epochs, batch_size, buffer_rows, patience, rng, callback,
            progress, history, snapshot, best, watch, schedule=None, average=None):
    """The epochs of a streamed fit: buffer after buffer of shuffled blocks, with fit's bookkeeping."""
    kept = {"probe": None}

    def run_epoch(epoch):
        losses, first_diverged = [], False
        for k, (x, c) in enumerate(_buffers(train, rng, buffer_rows, batch_size)):
            order = np.arange(len(x))
            if trainer is not None:
                step_losses, diverged = _compiled_epoch(flow, trainer, x.reshape(len(x), -1), order, batch_size,
                                                        history, c)
            else:
                step_losses, diverged = _numpy_epoch(flow, optimizer, x, order, batch_size, snapshot, history, c,
                                                     watch, average)
            losses.extend(step_losses)
            first_diverged = first_diverged or (k == 0 and diverged)
            if k == 0:
                kept["probe"] = (x[:min(batch_size, 64)].copy(),
                                 None if c is None else c[:min(batch_size, 64)].copy())
        return losses, first_diverged

    def probe_loss():
        # as fit does: the last update must not have diverged for the last epoch to be the one kept
        if kept["probe"] is None:
            return 0.0
        x, c = kept["probe"]
        with np.errstate(all="ignore"):
            try:
                return -float(np.mean(flow.log_prob(x, context=c)))
            except (ValueError, FloatingPointError):
                return np.inf

    run_epochs(flow, optimizer, trainer, epochs, patience, callback, progress, history, snapshot, best, watch,
               schedule, run_epoch, (lambda: _stream_nll(flow, valid, batch_size)) if valid is not None else None,
               probe_loss, average)


