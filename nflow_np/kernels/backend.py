"""Which implementation runs the hot loops: ``"numpy"`` (the reference) or ``"numba"`` (compiled).

The choice is global (:func:`set_backend`), scoped (``with backend("numpy"):``)
or per call (``backend=`` on ``log_prob``, ``sample``, ``sample_and_log_prob``
and ``fit``). The default is ``"numba"`` when Numba is installed, else
``"numpy"``.

Numba is imported on the first compiled call, never by ``import nflow_np``.
Kernel modules mark their compiled twins with :func:`numba_twin`; the marked
functions stay plain Python until :func:`load_numba` compiles them all at once
(lazily, per dtype, cached on disk) and swaps the compiled dispatchers into
every kernel module, so that twins calling twins call compiled code.
"""

import contextlib
import importlib.util
import sys
import threading

__all__ = ["BACKENDS", "set_backend", "get_backend", "backend", "resolve_backend", "numba_available",
           "numba_twin", "load_numba"]

BACKENDS = ("numpy", "numba")

_state = threading.local()
_default = None
_twins = []          # (function, options) in registration order
_compiled = None     # function -> dispatcher, once load_numba has run
_lock = threading.Lock()


def numba_available():
    """Whether Numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def _check_name(name, where):
    if not isinstance(name, str) or name not in BACKENDS:
        hint = " (the GPU backend is not part of this build)" if name == "cuda" else ""
        raise ValueError(f"{where}: backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}{hint}")
    if name == "numba" and not numba_available():
        raise ImportError(f"{where}: backend 'numba' needs the numba package, which is not installed; "
                          f"pip install numba, or use backend='numpy'")
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
    """Set the global default backend, ``"numpy"`` or ``"numba"``; returns the previous one."""
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


def numba_twin(fn=None, *, parallel=False):
    """Mark ``fn`` as a compiled twin: plain Python until :func:`load_numba` runs, ``njit`` after.

    ``parallel=True`` compiles with Numba's ``parallel`` option (``prange`` loops over rows).
    """
    def mark(f):
        _twins.append((f, {"parallel": parallel}))
        return f
    return mark if fn is None else mark(fn)


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
        import numba

        compiled = {}
        for fn, options in _twins:
            # error_model="numpy": a division by zero gives inf/NaN like NumPy (caught by the callers'
            # finiteness checks) instead of raising inside a compiled loop. fastmath is limited to
            # reassociation and fused multiply-add, so that dot products vectorize; NaN and inf keep
            # their meaning (no "nnan"/"ninf"), which the finiteness guards rely on.
            compiled[fn] = numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"},
                                      parallel=options["parallel"])(fn)
        prefix = __name__.rsplit(".", 1)[0] + "."
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith(prefix):
                continue
            namespace = vars(module)
            if namespace.get("prange") is range:
                namespace["prange"] = numba.prange
            for key, value in list(namespace.items()):
                if callable(value) and value in compiled:
                    namespace[key] = compiled[value]
        _compiled = compiled
        return compiled
