"""nflow_np: normalizing flows in NumPy with exact, verified log-densities.

``import nflow_np`` needs NumPy alone; SciPy and Numba load on first use.
"""

from . import bijectors, distributions, testing
from .distributions import TransformedDistribution
from .kernels import backend, get_backend, set_backend
from .estimator import FlowDensity
from .io import load, save

__version__ = "0.1.0"

__all__ = ["bijectors", "distributions", "testing", "TransformedDistribution", "__version__", "backend", "get_backend",
           "set_backend", "FlowDensity", "save", "load"]
