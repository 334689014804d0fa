"""Uniform distribution on [low, high]."""

import numpy as np

from .._validation import as_float_array, resolve_dtype
from .base import Distribution


class Uniform(Distribution):
    """Uniform on [low, high], elementwise (scalar events). log_prob is -inf outside the support."""

    def __init__(self, low=0.0, high=1.0, *, dtype=None):
        self.dtype = resolve_dtype(dtype, low, high, where=type(self).__name__)
        self.low = np.array(as_float_array(low, self.dtype, "Uniform", "low"), dtype=self.dtype)
        self.high = np.array(as_float_array(high, self.dtype, "Uniform", "high"), dtype=self.dtype)
        if not np.all(self.high > self.low):
            raise ValueError(f"Uniform: high must exceed low; got low={self.low}, high={self.high}")
        self.batch_shape = np.broadcast_shapes(self.low.shape, self.high.shape)
        self.event_shape = ()

    def _log_prob(self, x):
        inside = (x >= self.low) & (x <= self.high)
        return np.where(inside, -np.log(self.high - self.low), -np.inf).astype(self.dtype, copy=False)

    def _log_prob_grad(self, x):
        return np.zeros(np.broadcast_shapes(x.shape, self.batch_shape), dtype=self.dtype)

    def _cdf(self, x):
        return np.clip((x - self.low) / (self.high - self.low), 0.0, 1.0)

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
        return self.low + (self.high - self.low) * u

    def mean(self):
        return np.broadcast_to((self.low + self.high) / 2, self.batch_shape).copy()

    def entropy(self):
        return np.broadcast_to(np.log(self.high - self.low), self.batch_shape).copy()

    def __repr__(self):
        return f"Uniform(low={self.low}, high={self.high})"
