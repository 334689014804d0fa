"""What every CUDA kernel module shares: ``numba.cuda``, launch geometry, per-dtype kernel families, scratch.

Kernels are built by *family factories*: ``factory(ft, geometry)`` returns the
kernels of one family compiled for the float type ``ft`` (``np.float32`` or
``np.float64``) and one launch geometry (the frames' factories take the transform's
name too). Inside a kernel every constant is written
``ft(0.5)``: a bare ``0.5`` is a float64 literal, and a float32 kernel that touches
one computes in double precision (2x slower on a data-centre card, up to 64x on
others). :func:`family` builds each (dtype, geometry) once.

The geometry differs under the simulator (``NUMBA_ENABLE_CUDASIM=1``), where every
CUDA thread is a Python thread: small tiles keep the tests fast while running the
same code; :func:`use_geometry` lets a test run the GPU geometry too.

Scalar math written once in plain Python (:mod:`nflow_np.kernels.scalar`, the
transforms of :mod:`nflow_np.kernels.transforms`) becomes device functions through
:func:`device_version`.
"""

import contextlib
import functools
import sys
import threading
import types
import warnings
from collections import namedtuple

import numpy as np
from numba import config as _numba_config
from numba import cuda

__all__ = ["cuda", "SIMULATED", "Geometry", "GPU", "SIM", "geometry", "use_geometry", "family", "jit", "blocks",
           "launch", "launch_rows", "device_version", "Scratch", "is_device_array", "as_device", "empty",
           "dummy"]

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)


def _serialize_simulated_shared_arrays():
    """Make the simulator give every thread of a block the same shared array.

    The simulator (numba's and numba-cuda's) creates a block's shared array when
    the first thread asks for it, without a lock: two threads arriving together
    get two arrays, and a block-wide sum silently loses half its terms (rarely:
    it needs a thread switch inside those few lines). Same lookup, under a lock.
    """
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, *args, **kwargs):
        if shape == 0:      # dynamic shared memory: one preallocated buffer, no race
            return original(self, shape, dtype, *args, **kwargs)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)     # the simulator's key: the allocating line
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if SIMULATED:
    _serialize_simulated_shared_arrays()

Geometry = namedtuple("Geometry", ["tile", "threads", "reduce", "split_rows", "vector"])
Geometry.__doc__ = """Launch geometry.

tile: ``(BM, BN, BK, TM, TN)`` of the matrix product: a block computes a ``BM x BN``
    tile of the output in steps of ``BK``, each thread a ``TM x TN`` sub-tile held in registers.
threads: threads per block of the one-thread-per-row kernels.
reduce: ``(columns, rows)`` of a column-sum block; ``rows`` a power of two.
split_rows: rows summed by one block of a column or vector sum before the partials are added.
vector: threads per block of a vector sum (a power of two).
"""
# 64 x 64 tiles, 16 x 16 threads of 4 x 4 outputs: the widths of flows (16..1024) fill them, and the
# 2 x 64 x 16 staged values per step fit any card's shared memory many times over
GPU = Geometry(tile=(64, 64, 16, 4, 4), threads=256, reduce=(32, 8), split_rows=2048, vector=256)
# every simulated thread is a Python thread, whose start costs more than its work: few threads per block
SIM = Geometry(tile=(8, 8, 4, 4, 4), threads=8, reduce=(4, 2), split_rows=8, vector=4)
_current = [SIM if SIMULATED else GPU]


def geometry():
    """The launch geometry in force."""
    return _current[0]


@contextlib.contextmanager
def use_geometry(geom):
    """Launch with ``geom`` inside a ``with`` block (tests run the GPU geometry under the simulator)."""
    previous = _current[0]
    _current[0] = geom
    try:
        yield geom
    finally:
        _current[0] = previous


def jit(fn):
    """``cuda.jit`` with the on-disk cache (the simulator has none: it runs Python)."""
    return cuda.jit(fn) if SIMULATED else cuda.jit(fn, cache=True)


_PACKAGE = __name__.rsplit(".", 2)[0] + "."     # "nflow_np.kernels."
_device_versions = {}    # Python function -> its CUDA device function
_versions_lock = threading.RLock()


def _python_function(value):
    """The plain-Python function behind ``value`` when it is one of ``nflow_np.kernels`` (or a Numba CPU twin of
    one), else None: CUDA device functions, builtins and everything else are left as they are."""
    if not isinstance(value, types.FunctionType):
        if type(value).__name__ != "CPUDispatcher":
            return None
        value = value.py_func
    return value if getattr(value, "__module__", "").startswith(_PACKAGE) else None


def _global_names(code):
    """The global names ``code`` (and any code nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def device_version(fn):
    """``fn``, plain Python on scalars (or a Numba CPU twin of such a function), as a CUDA device function.

    The device function is compiled from a copy of ``fn`` whose globals are its module's, except that every
    global it calls that is itself a function of ``nflow_np.kernels`` (a :mod:`~nflow_np.kernels.scalar`
    helper, a transform's private helper...) is replaced by *its* device version, recursively: the one
    Python source then runs on the GPU whatever the module's namespace holds (plain functions before
    :func:`~nflow_np.kernels.backend.load_numba`, CPU dispatchers after). Built once per function; a
    function is cached before its callees are converted, so recursion through the globals terminates.
    """
    py = _python_function(fn)
    if py is None:
        py = getattr(fn, "py_func", fn)
    # a CPU-only implementation names its device replacement (vmath's exp_/tanh_: math.exp/math.tanh)
    py = getattr(py, "device_twin", py)
    with _versions_lock:
        found = _device_versions.get(py)
        if found is not None:
            return found
        bound = dict(py.__globals__)
        # Under NUMBA_ENABLE_CUDASIM the simulator iterates a device function's globals on every call while
        # other threads run it; a warning raised there (a float64 overflow) would insert Python's warning
        # registry into those globals mid-iteration ("dictionary changed size during iteration")
        bound.setdefault("__warningregistry__", {})
        copy = types.FunctionType(py.__code__, bound, py.__name__, py.__defaults__, py.__closure__)
        copy.__qualname__ = py.__qualname__
        copy.__module__ = py.__module__
        copy.__doc__ = py.__doc__
        version = _device_versions[py] = cuda.jit(copy, device=True)
        for name in _global_names(py.__code__):
            callee = _python_function(bound.get(name))
            if callee is not None:
                bound[name] = device_version(callee)
        return version


# the name the sources' docstrings use
device_function = device_version


def family(factory):
    """Decorator: ``factory(ft, geometry, *extra)`` becomes ``get(dtype, *extra)``, built once per dtype, geometry
    and (hashable) ``extra`` arguments: a frame's kernels are built per transform, for example."""
    built = {}

    @functools.wraps(factory)
    def get(dtype, *extra):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{factory.__name__}: CUDA kernels run in float32 or float64; got {dtype}")
        key = (dtype.char, geometry()) + extra
        kernels = built.get(key)
        if kernels is None:
            kernels = built[key] = factory(dtype.type, geometry(), *extra)
        return kernels

    return get


def blocks(n, threads):
    """Blocks of ``threads`` covering ``n`` items (at least one)."""
    return max(1, -(-int(n) // threads))


_configurations = {}


def launch(kernel, grid, block):
    """``kernel[grid, block]``, configured once per geometry and reused.

    Numba warns about every launch of fewer than 128 blocks; ours are small on
    purpose (a reduction's last stage, one-thread bookkeeping, small batches), so
    the warning is silenced where the configuration is made, for our kernels only.
    Reusing the configuration also saves building it at every launch.
    """
    if SIMULATED:
        return kernel[grid, block]     # the simulator's kernel keeps one configuration: set it at every launch
    key = (kernel, grid, block)
    configured = _configurations.get(key)
    if configured is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            configured = kernel[grid, block]
        if len(_configurations) > 4096:
            _configurations.clear()
        _configurations[key] = configured
    return configured


def launch_rows(kernel, n, *args):
    """Launch ``kernel`` with one thread per item of ``n`` (nothing when ``n`` is 0)."""
    if n:
        threads = geometry().threads
        launch(kernel, blocks(n, threads), threads)(*args)


def is_device_array(x):
    """Whether ``x`` lives on the device (a Numba device array, or any ``__cuda_array_interface__`` object)."""
    if SIMULATED:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return isinstance(x, FakeCUDAArray)
    return cuda.is_cuda_array(x)


def as_device(x):
    """A Numba view of a device array (CuPy and PyTorch arrays are wrapped, not copied)."""
    return x if SIMULATED else cuda.as_cuda_array(x)


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


_dummies = {}


def dummy(dtype, ndim=1):
    """A one-element device array standing in for an argument a kernel variant does not read."""
    key = (np.dtype(dtype).char, ndim)
    if key not in _dummies:
        _dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype=dtype))
    return _dummies[key]


class Scratch:
    """Reusable device buffers (partial sums, small vectors), grown on demand and never shrunk.

    A runner owns one for the life of a fit, so the steps allocate nothing; the
    twins called without one (the tests) share :data:`DEFAULT`.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, size, dtype):
        """A contiguous device vector of ``size`` entries; contents undefined."""
        key = (name, np.dtype(dtype).char)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._buffers[key] = cuda.device_array(max(int(size), 1), dtype=dtype)
        return buf[:size]


DEFAULT = Scratch()


def scratch_or_default(work):
    return DEFAULT if work is None else work
