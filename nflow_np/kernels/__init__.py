"""The hot loops compiled (Numba on the CPU, ``numba.cuda`` in :mod:`.cuda`), and the backend switch.

Their NumPy references are the passes of the bijectors, of :mod:`nflow_np.nn` and of the optimizers. The only
NumPy kernels kept here are those nothing else gives: the spline's (:mod:`.spline`), which the spline bijectors
run, and the reference of the device's base draws (:func:`.cuda.elementwise.philox_normal_numpy`).

``import nflow_np`` imports this package but not Numba; the first compiled call does.
"""

from .backend import BACKENDS, backend, get_backend, numba_available, resolve_backend, set_backend

__all__ = ["BACKENDS", "backend", "get_backend", "numba_available", "resolve_backend", "set_backend"]
