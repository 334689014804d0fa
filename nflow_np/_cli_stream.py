"""Streaming tables for the command line: ``.npy``, CSV and Parquet read and written in chunks of rows.

``nflow-np logprob`` and ``sample`` never hold a whole file: they read (or draw) one chunk of rows at a time,
score it, and append it to the output, so memory stays at a few chunks whatever the file's size. With
``--scheduler ADDRESS`` the chunks are scored (or drawn) on a Dask cluster, a bounded number in flight at a time,
and written in order.

Parquet needs ``pyarrow`` (the ``dask`` extra brings it); a table's numeric columns are the features.
"""

import struct
import sys

import numpy as np

from ._tables import check_file, text_rows

__all__ = ["read_chunks", "ChunkWriter", "output_format"]

CHUNK_ROWS = 65536
"""Rows read, scored and written at a time."""


def _pyarrow(path, what):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ValueError(f"{path}: {what} Parquet needs pyarrow, which is not installed; pip install pyarrow (or "
                         f"\"nflow_np[dask]\"), or use .npy or CSV") from None
    return pyarrow


def _is_parquet(path):
    return path.lower().endswith((".parquet", ".pq"))


def read_chunks(path, rows=CHUNK_ROWS):
    """Chunks ``(n_i, d)`` float64 of a ``.npy``, Parquet or CSV / text file, checked as ``read_data`` checks a
    whole file (a NaN names its row or line)."""
    check_file(path)
    if path.endswith(".npy"):
        yield from _npy_chunks(path, rows)
    elif _is_parquet(path):
        yield from _parquet_chunks(path, rows)
    else:
        yield from _text_chunks(path, rows)


def _finite(chunk, path, first_row):
    if not np.isfinite(chunk).all():
        row, col = np.argwhere(~np.isfinite(chunk))[0]
        raise ValueError(f"{path}: row {first_row + row} holds {chunk[row, col]} in column {col + 1}; rows with NaN "
                         f"or infinity cannot be used (drop or fill them)")
    return chunk


def _npy_chunks(path, rows):
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected a numeric array; got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: expected a non-empty array of shape (n_points, n_features); got {arr.shape}")
    for start in range(0, arr.shape[0], rows):
        yield _finite(np.asarray(arr[start:start + rows], dtype=np.float64), path, start)


def _parquet_chunks(path, rows):
    pa = _pyarrow(path, "reading")
    try:
        table = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
    columns = [f.name for f in table.schema_arrow if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    if not columns:
        raise ValueError(f"{path}: no numeric columns (a Parquet table's numeric columns are the features)")
    seen = 0
    for batch in table.iter_batches(batch_size=rows, columns=columns):
        if any(column.null_count for column in batch.columns):
            raise ValueError(f"{path}: holds missing values (nulls) in rows {seen}..{seen + batch.num_rows}; drop or "
                             f"fill them")
        chunk = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                                 for i in range(batch.num_columns)])
        yield _finite(chunk, path, seen)
        seen += batch.num_rows
    if seen == 0:
        raise ValueError(f"{path}: no data rows")


def _text_chunks(path, rows):
    chunk, any_rows = [], False
    for _, values in text_rows(path):
        chunk.append(values)
        if len(chunk) == rows:
            yield np.array(chunk, dtype=np.float64)
            chunk, any_rows = [], True
    if chunk:
        yield np.array(chunk, dtype=np.float64)
    elif not any_rows:
        raise ValueError(f"{path}: no data rows")


def output_format(out):
    """``"npy"``, ``"parquet"`` or ``"csv"``, by the output's suffix (``-``, stdout, is CSV)."""
    if out != "-" and out.endswith(".npy"):
        return "npy"
    if out != "-" and _is_parquet(out):
        return "parquet"
    return "csv"


_NPY_HEADER = 128
"""Bytes of the ``.npy`` header written before the row count is known, rewritten with it at the end."""


def _npy_header(shape, dtype):
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.dtype(dtype).str, tuple(shape))
    body = text.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class ChunkWriter:
    """Append 2-D float64 chunks to a CSV (or stdout), ``.npy`` or Parquet file as they come."""

    def __init__(self, out, columns_name="x", flat=False):
        self.out, self.kind, self.columns_name, self.flat = out, output_format(out), columns_name, flat
        self.rows, self.width, self.fh, self.parquet = 0, None, None, None
        if self.kind == "parquet":
            self.pa = _pyarrow(out, "writing")
        try:
            if out == "-":
                self.fh = sys.stdout
            elif self.kind == "npy":
                self.fh = open(out, "wb")
            elif self.kind == "csv":
                self.fh = open(out, "w", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{out}: cannot write ({exc.strerror or exc})") from None
        if self.kind == "npy":
            self.fh.write(_npy_header((0, 0), np.float64))

    def write(self, chunk):
        chunk = np.asarray(chunk, dtype=np.float64)
        chunk = chunk.reshape(len(chunk), -1)
        if self.width is None:
            self.width = chunk.shape[1]
        try:
            if self.kind == "npy":
                self.fh.write(np.ascontiguousarray(chunk).tobytes())
            elif self.kind == "parquet":
                names = [self.columns_name] if self.width == 1 else \
                    [f"{self.columns_name}{i}" for i in range(self.width)]
                table = self.pa.table({name: chunk[:, i] for i, name in enumerate(names)})
                if self.parquet is None:
                    self.parquet = self.pa.parquet.ParquetWriter(self.out, table.schema)
                self.parquet.write_table(table)
            else:
                np.savetxt(self.fh, chunk, delimiter=",", fmt="%.17g")   # %.17g reads back to the same float64
        except OSError as exc:
            raise ValueError(f"{self.out}: cannot write ({exc.strerror or exc})") from None
        self.rows += len(chunk)

    def close(self):
        try:
            if self.kind == "npy":
                self.fh.seek(0)
                shape = (self.rows,) if self.flat else (self.rows, self.width or 0)
                self.fh.write(_npy_header(shape, np.float64))
            if self.parquet is not None:
                self.parquet.close()
            elif self.kind == "parquet":    # no rows: an empty table of no columns still makes a valid file
                self.pa.parquet.write_table(self.pa.table({}), self.out)
            if self.fh is not None:
                self.fh.flush()
        except OSError as exc:
            raise ValueError(f"{self.out}: cannot write ({exc.strerror or exc})") from None
        finally:
            if self.fh is not None and self.fh is not sys.stdout:
                self.fh.close()


def write_chunks(chunks, out, columns_name="x", flat=False):
    """Write every chunk of the iterable ``chunks`` to ``out`` (one value per row with ``flat``: a 1-D ``.npy``);
    the number of rows written."""
    writer = ChunkWriter(out, columns_name, flat)
    try:
        for chunk in chunks:
            writer.write(chunk)
    finally:
        writer.close()
    return writer.rows


# ---------------------------------------------------------------------------- on a Dask cluster

def connect(address):
    """A ``distributed.Client`` of the scheduler at ``address`` (ValueError when Dask is missing or it is not
    reachable)."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs Dask: pip install \"nflow_np[dask]\"") from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"--scheduler {address}: cannot connect ({' '.join(str(exc).split())})") from None


def in_order(client, submit, items, window=None):
    """``submit(item)`` → future for each item, at most ``window`` in flight, results yielded in order."""
    from collections import deque
    window = window or 2 * max(1, len(client.scheduler_info()["workers"]))
    pending = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def score_model(model, X):
    """Log-densities of the rows ``X`` (n, d), float64, under a FlowDensity or a distribution over vectors (or
    scalars) as the command line reads models."""
    if hasattr(model, "score_samples"):
        return model.score_samples(X)
    points = X.astype(model.dtype)
    return model.log_prob(points if model.event_shape else points[:, 0])


def _score_chunk(X, payload):
    from .dask._models import cached_model
    return score_model(cached_model(payload), X)


def score_on_cluster(client, model_path, chunks):
    """Log-densities of each chunk, scored on the cluster by the model file's bytes (loaded once per worker)."""
    from .dask._models import payload_of
    payload = client.scatter(payload_of(model_path, "logprob"), broadcast=True, hash=False)
    return in_order(client, lambda chunk: client.submit(_score_chunk, chunk, payload, pure=False), chunks)


def sample_on_cluster(client, model_path, n, seed, rows):
    """The blocks of ``nflow_np.dask.sample`` of the model file, drawn on the cluster, in order."""
    from .dask import sample
    lazy = sample(model_path, n, seed, chunks=rows)
    if lazy.ndim == 1:
        lazy = lazy[:, None]
    return in_order(client, lambda i: client.compute(lazy.blocks[i]), range(lazy.numblocks[0]))
