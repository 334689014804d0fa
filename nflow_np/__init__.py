"""nflow_np: normalizing flows in NumPy with exact, verified log-densities.

``import nflow_np`` needs NumPy alone; SciPy and Numba load on first use.
The estimator, the model files and the checkers load on first access
(``nflow_np.FlowDensity``, ``nflow_np.save``/``load``, ``nflow_np.testing``),
which keeps the import itself close to NumPy's. Every subpackage is an
attribute (``nflow_np.flows``, ``nflow_np.train``, ``nflow_np.datasets``,
``nflow_np.plot``, ...), loaded on first access.
"""

import importlib

from . import bijectors, distributions
from .distributions import TransformedDistribution
from .kernels import backend, get_backend, set_backend

__version__ = "0.1.0"

_SUBMODULES = ("bijectors", "distributions", "nn", "kernels", "flows", "train", "datasets", "plot", "testing", "io",
               "estimator")

__all__ = ["bijectors", "distributions", "nn", "kernels", "flows", "train", "datasets", "plot", "testing",
           "TransformedDistribution", "__version__", "backend", "get_backend", "set_backend", "FlowDensity",
           "FlowOutlierDetector", "save", "load"]

_LAZY = {"FlowDensity": ("estimator", "FlowDensity"), "FlowOutlierDetector": ("estimator", "FlowOutlierDetector"),
         "save": ("io", "save"), "load": ("io", "load"),
         **{name: (name, None) for name in _SUBMODULES}}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'nflow_np' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
