"""Which implementation runs the hot loops: ``"numpy"`` (reference), ``"numba"`` (compiled, CPU) or ``"cuda"`` (GPU).

The choice is global (:func:`set_backend`), scoped (``with backend("numpy"):``)
or per call (``backend=`` on ``log_prob``, ``sample``, ``sample_and_log_prob``
and ``fit``). The default is ``"numba"`` when Numba is installed, else
``"numpy"``; ``"cuda"`` is never chosen by default.

Numba is imported on the first compiled call, never by ``import nflow_np``.
Kernel modules mark the functions Numba compiles with :func:`numba_twin`: each
is the compiled twin of a NumPy pass that lives outside the kernels (a
bijector's, :class:`nflow_np.nn.MLP`'s, :class:`nflow_np.train.Adam`'s), the
reference the tests hold it to. The marked functions stay plain Python until
:func:`load_numba` compiles them all at once (lazily, per dtype, cached on disk)
and swaps the compiled dispatchers into every kernel module, so that twins
calling twins call compiled code.

``"cuda"`` is checked when it is first asked for (:func:`cuda_available`): it
needs ``numba.cuda`` (from the ``numba-cuda`` package, ``pip install
"nflow_np[cuda]"``, or the CUDA target still built into older Numba releases)
and an NVIDIA GPU with its driver, or the simulator (``NUMBA_ENABLE_CUDASIM=1``,
for tests). Without them, asking for it raises an error saying which is missing.
"""

import contextlib
import importlib.util
import sys
import threading

__all__ = ["BACKENDS", "set_backend", "get_backend", "backend", "resolve_backend", "numba_available",
           "cuda_available", "on_device", "numba_twin", "load_numba"]

BACKENDS = ("numpy", "numba", "cuda")

_state = threading.local()
_default = None
_twins = []          # functions, in registration order
_compiled = None     # function -> dispatcher, once load_numba has run
_lock = threading.Lock()
_cuda_probe = []     # [None] when the CUDA backend can run, else [(exception class, reason)]


def numba_available():
    """Whether Numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


_CUDA_INSTALL = "pip install 'nflow_np[cuda]' (the numba-cuda package with the CUDA toolkit's wheels)"


def _probe_cuda():
    """``None`` when ``backend="cuda"`` can run here, else ``(exception class, what is missing)``."""
    if not numba_available():
        return ImportError, f"numba.cuda is needed, and numba is not installed; {_CUDA_INSTALL}"
    try:
        from numba import config
        from numba import cuda
    except Exception as exc:    # a Numba without its built-in CUDA target, and no numba-cuda
        return ImportError, f"cannot import numba.cuda ({type(exc).__name__}: {exc}); {_CUDA_INSTALL}"
    if config.ENABLE_CUDASIM:
        return None
    try:
        found = cuda.is_available()
    except Exception as exc:
        found, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "numba.cuda.is_available() is False: no NVIDIA GPU, or no driver for it"
    if not found:
        return RuntimeError, (f"no CUDA GPU was found ({why}); run on a machine with an NVIDIA GPU and its driver, "
                              f"use backend='numba' (CPU), or set NUMBA_ENABLE_CUDASIM=1 for the simulator "
                              f"(slow; for tests)")
    try:    # a GPU, but can kernels be compiled? NVVM comes with the CUDA toolkit, or numba-cuda's wheels
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as exc:
        return ImportError, (f"found a GPU, but numba.cuda cannot load NVVM, the CUDA compiler "
                             f"({type(exc).__name__}: {exc}); {_CUDA_INSTALL}")
    return None


def cuda_available():
    """Whether ``backend="cuda"`` can run here (a GPU, or the simulator); imports ``numba.cuda`` the first time."""
    if not _cuda_probe:
        with _lock:
            if not _cuda_probe:
                _cuda_probe.append(_probe_cuda())
    return _cuda_probe[0] is None


def on_device(x):
    """Whether ``x`` is a CUDA device array (Numba's, CuPy's, PyTorch's...), checked without importing anything."""
    # the simulator's arrays carry no __cuda_array_interface__
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray"


def _check_name(name, where):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    if name == "numba" and not numba_available():
        raise ImportError(f"{where}: backend 'numba' needs the numba package, which is not installed; "
                          f"pip install numba, or use backend='numpy'")
    if name == "cuda" and not cuda_available():
        error, reason = _cuda_probe[0]
        raise error(f"{where}: backend 'cuda': {reason}")
    return name


def get_backend():
    """The backend in force here: the innermost ``with backend(...)``, else the global default."""
    scoped = getattr(_state, "stack", None)
    if scoped:
        return scoped[-1]
    global _default
    if _default is None:
        _default = "numba" if numba_available() else "numpy"
    return _default


def set_backend(name):
    """Set the global default backend, ``"numpy"``, ``"numba"`` or ``"cuda"``; returns the previous one."""
    global _default
    previous = get_backend()
    _default = _check_name(name, "set_backend")
    return previous


@contextlib.contextmanager
def backend(name):
    """Use backend ``name`` inside a ``with`` block (per thread), then restore the previous choice."""
    _check_name(name, "backend")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


def resolve_backend(name=None, where="backend"):
    """``name`` validated, or the backend in force when ``name`` is None."""
    return get_backend() if name is None else _check_name(name, where)


def numba_twin(fn):
    """Mark ``fn`` for Numba, as the compiled twin of a NumPy pass kept elsewhere (a bijector's, a network's, the
    optimizer's): plain Python until :func:`load_numba` runs, ``njit`` after."""
    with _lock:
        _twins.append(fn)
        if _compiled is None:
            return fn
        # a kernel module imported after load_numba ran: its twins are wrapped as they are defined
        _compiled[fn] = _dispatcher(fn)
        return _compiled[fn]


def _dispatcher(fn):
    import numba

    # error_model="numpy": a division by zero gives inf/NaN like NumPy (caught by the callers'
    # finiteness checks) instead of raising inside a compiled loop. fastmath is limited to
    # reassociation and fused multiply-add, so that dot products vectorize; NaN and inf keep
    # their meaning (no "nnan"/"ninf"), which the finiteness guards rely on. A function marked
    # ``strict_fp`` (the range reductions of :mod:`.vmath`) gets no "reassoc".
    # ``inline_always``: Numba inlines the function's body into its callers (a transform's scalar step, so that the
    # frames' loops over rows see straight-line code they can vectorize; LLVM declines to inline it on its own)
    flags = {"contract"} if getattr(fn, "strict_fp", False) else {"reassoc", "contract"}
    extra = {"inline": "always"} if getattr(fn, "inline_always", False) else {}
    return numba.njit(cache=True, error_model="numpy", fastmath=flags, **extra)(fn)


def load_numba():
    """Compile-on-first-call dispatchers for every marked twin, swapped into the kernel modules.

    Idempotent and thread safe. Each dispatcher compiles once per argument
    types (so once per dtype) on its first call and caches the machine code
    on disk (``cache=True``), so a second process loads instead of compiling.
    """
    global _compiled
    if _compiled is not None:
        return _compiled
    with _lock:
        if _compiled is not None:
            return _compiled
        _check_name("numba", "load_numba")
        from .warm import check_cache
        check_cache()       # before anything loads from the disk cache
        compiled = {fn: _dispatcher(fn) for fn in _twins}
        prefix = __name__.rsplit(".", 1)[0] + "."
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith(prefix):
                continue
            namespace = vars(module)
            for key, value in list(namespace.items()):
                if callable(value) and value in compiled:
                    namespace[key] = compiled[value]
        _compiled = compiled
        return compiled
