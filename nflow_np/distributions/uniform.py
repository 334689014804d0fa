"""Uniform distribution on [low, high]."""

import numpy as np

from .._validation import as_float_array, resolve_dtype
from .base import Distribution

_LOG_2 = float(np.log(2.0))


class Uniform(Distribution):
    """Uniform on [low, high], elementwise (scalar events). log_prob is -inf outside the support.

    Any finite bounds work, even ones whose width ``high - low`` exceeds the
    dtype's range (``Uniform(-1e308, 1e308)``): the width is then handled
    halved, so the log-density, the CDF and the samples stay finite and exact
    to rounding.
    """

    def __init__(self, low=0.0, high=1.0, *, dtype=None):
        self.dtype = resolve_dtype(dtype, low, high, where=type(self).__name__)
        self.low = np.array(as_float_array(low, self.dtype, "Uniform", "low"), dtype=self.dtype)
        self.high = np.array(as_float_array(high, self.dtype, "Uniform", "high"), dtype=self.dtype)
        if not np.all(self.high > self.low):
            raise ValueError(f"Uniform: high must exceed low; got low={self.low}, high={self.high}")
        self.batch_shape = np.broadcast_shapes(self.low.shape, self.high.shape)
        self.event_shape = ()
        with np.errstate(over="ignore"):
            width = self.high - self.low
        # where the width overflows, work with the half-width (exact: halving a normal number is)
        self._halved = ~np.isfinite(width)
        self._half = np.where(self._halved, 0.5, 1.0).astype(self.dtype)
        self._span = np.where(self._halved, self._half * self.high - self._half * self.low, width)
        self._log_width = (np.log(self._span) + np.where(self._halved, _LOG_2, 0.0)).astype(self.dtype)

    def _log_prob(self, x):
        inside = (x >= self.low) & (x <= self.high)
        return np.where(inside, -self._log_width, -np.inf).astype(self.dtype, copy=False)

    def _log_prob_grad(self, x):
        return np.zeros(np.broadcast_shapes(x.shape, self.batch_shape), dtype=self.dtype)

    def _cdf(self, x):
        with np.errstate(over="ignore", invalid="ignore"):
            u = (self._half * x - self._half * self.low) / self._span
        return np.clip(u, 0.0, 1.0)

    def cdf(self, x):
        return self._cdf(self._prepare(x, "cdf"))

    def _log_cdf(self, x):
        with np.errstate(divide="ignore"):
            return np.log(self._cdf(x))

    def _log_survival(self, x):
        with np.errstate(divide="ignore"):
            return np.log1p(-self._cdf(x))

    def _sample(self, shape, rng):
        u = rng.random(shape + self.batch_shape, dtype=self.dtype)
        # low + (high - low) u, with the width halved where it overflows, and clipped to the support
        # (rounding can carry low + width * u past high)
        x = self._half * self.low + self._span * u
        return np.minimum(x / self._half, self.high).astype(self.dtype, copy=False)

    def lower(self):
        """A :class:`~nflow_np.kernels.specs.UniformSpec` when this is a box over one axis (batch shape ``(d,)``),
        the base of a flow on ``d`` coordinates."""
        from ..kernels.specs import UniformSpec, Unsupported
        if len(self.batch_shape) != 1 or dict(self.parameters()):
            raise Unsupported("the base distribution is not a Uniform box over one axis of coordinates")
        d = int(self.batch_shape[0])

        def full(a):
            return np.ascontiguousarray(np.broadcast_to(a, (d,)), dtype=self.dtype)

        return UniformSpec(d, full(self.low), full(self.high), full(self._log_width), full(self._span),
                           full(self._half))

    def mean(self):
        return np.broadcast_to(self.low / 2 + self.high / 2, self.batch_shape).copy()

    def entropy(self):
        return np.broadcast_to(self._log_width, self.batch_shape).copy()

    def __repr__(self):
        return f"Uniform(low={self.low}, high={self.high})"
