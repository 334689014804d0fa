"""The hot loops: NumPy references and their compiled twins, and the backend switch that picks one.

``import nflow_np`` imports this package but not Numba; the first compiled call does.
"""

from .backend import BACKENDS, backend, get_backend, numba_available, resolve_backend, set_backend

__all__ = ["BACKENDS", "backend", "get_backend", "numba_available", "resolve_backend", "set_backend"]
