"""``.npy`` files as Dask arrays and as Dask store targets, through memory maps opened where a task runs.

``dask.array.from_array`` on an ``np.memmap`` would ship the mapped data itself to every worker process; these
wrappers travel as a path and open the file inside the task, so that a 10⁸-row file costs a worker only the
block it reads.
"""

import os

import numpy as np

import dask.array as da
from dask.base import tokenize

__all__ = ["NpyRows", "NpyTarget", "from_npy", "open_npy", "store_npy"]


class NpyRows:
    """Lazy row access to a ``.npy`` file: ``shape``, ``dtype`` and slicing; pickles as its path."""

    def __init__(self, path, shape=None, dtype=None):
        self.path = os.fspath(path)
        if shape is None:
            array = open_npy(self.path)
            shape, dtype = array.shape, array.dtype
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __reduce__(self):
        return NpyRows, (self.path, self.shape, self.dtype.str)

    def __getitem__(self, key):
        return np.array(np.load(self.path, mmap_mode="r", allow_pickle=False)[key])

    def __len__(self):
        return self.shape[0]


def open_npy(path, where="from_npy"):
    """The read-only memory map of a ``.npy`` file of numbers, or ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such file: {path!r}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: {path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if array.dtype.kind not in "fiub" or array.ndim < 1:
        raise ValueError(f"{where}: {path}: expected an array of numbers with rows; got dtype {array.dtype}, "
                         f"shape {array.shape}")
    return array


def from_npy(path, chunks=1 << 20):
    """A ``.npy`` file as a Dask array chunked by rows, read by memory map inside each task.

    Parameters
    ----------
    path : str or os.PathLike
        Every worker must see the file at this path (one machine, or a shared file system).
    chunks : int
        Rows per block (default 2**20); the other axes stay whole.

    Returns
    -------
    dask.array.Array
    """
    array = open_npy(path)
    rows = NpyRows(path, array.shape, array.dtype)
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ValueError(f"from_npy: chunks must be a positive int (rows per block); got {chunks!r}")
    # the name is the whole key: the file, its version and the chunks, so that no other array can share it
    token = tokenize(rows.path, os.path.getmtime(rows.path), rows.shape, rows.dtype.str, int(chunks))
    return da.from_array(rows, chunks=(int(chunks),) + tuple(-1 for _ in rows.shape[1:]), asarray=True,
                         fancy=False, name=f"nflow-np-npy-{token}")


class NpyTarget:
    """A ``.npy`` file written slice by slice by ``dask.array.store``, each task opening it as a memory map."""

    def __init__(self, path, shape, dtype, create=True):
        self.path, self.shape, self.dtype = os.fspath(path), tuple(shape), np.dtype(dtype)
        if create:
            np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape).flush()

    def __reduce__(self):
        return NpyTarget, (self.path, self.shape, self.dtype.str, False)

    def __setitem__(self, key, value):
        array = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        array[key] = value
        array.flush()
        del array


def store_npy(x, path, compute=True):
    """Write the Dask array ``x`` to a ``.npy`` file at ``path``, each block through a memory map as it is
    computed (bounded memory; every worker must see ``path``). ``compute=False`` returns the delayed write."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"store_npy: path must be a str or os.PathLike; got {type(path).__name__}")
    if any(np.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError("store_npy: x has unknown chunk sizes; call x.compute_chunk_sizes() first")
    return da.store(x, NpyTarget(path, x.shape, x.dtype), lock=False, compute=compute)
