"""Gaussian base distributions."""

import numpy as np

from .._special import log_ndtr
from .._validation import as_float_array, resolve_dtype
from .base import Distribution

_HALF_LOG_2PI = float(0.5 * np.log(2.0 * np.pi))


def _positive(value, dtype, where, name):
    arr = np.array(as_float_array(value, dtype, where, name), dtype=dtype)
    if not np.all(arr > 0):
        raise ValueError(f"{where}: {name} must be positive; got {arr}")
    return arr


def _broadcast(where, a, b, name_a, name_b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{where}: {name_a} and {name_b} must broadcast together; got shapes {a.shape} and "
                         f"{b.shape}") from None


class Normal(Distribution):
    """Univariate normal N(loc, scale^2), elementwise: scalar events, batch shape from ``loc`` and ``scale``.

    ``log_prob(x) = -((x - loc) / scale)^2 / 2 - log(scale) - log(2 pi) / 2``.
    """

    def __init__(self, loc=0.0, scale=1.0, *, dtype=None):
        self.dtype = resolve_dtype(dtype, loc, scale, where=type(self).__name__)
        self.loc = np.array(as_float_array(loc, self.dtype, "Normal", "loc"), dtype=self.dtype)
        self.scale = _positive(scale, self.dtype, "Normal", "scale")
        self.batch_shape = _broadcast("Normal", self.loc, self.scale, "loc", "scale")
        self.event_shape = ()

    def _standardize(self, x):
        return (x - self.loc) / self.scale

    def _log_prob(self, x):
        z = self._standardize(x)
        return -0.5 * z * z - np.log(self.scale) - _HALF_LOG_2PI

    def _log_prob_grad(self, x):
        return -self._standardize(x) / self.scale

    def _log_cdf(self, x):
        return log_ndtr(self._standardize(x))

    def _log_survival(self, x):
        return log_ndtr(-self._standardize(x))

    def _sample(self, shape, rng):
        z = rng.standard_normal(shape + self.batch_shape, dtype=self.dtype)
        return self.loc + self.scale * z

    def mean(self):
        return np.broadcast_to(self.loc, self.batch_shape).copy()

    def stddev(self):
        return np.broadcast_to(self.scale, self.batch_shape).copy()

    def entropy(self):
        return np.broadcast_to(0.5 + _HALF_LOG_2PI + np.log(self.scale), self.batch_shape).copy()

    def __repr__(self):
        return f"Normal(loc={self.loc}, scale={self.scale})"


class MultivariateNormalDiag(Distribution):
    """Multivariate normal with diagonal covariance diag(scale_diag)^2: vector events of size d.

    ``MultivariateNormalDiag(loc=np.zeros(d))`` is the standard normal base of a d-dimensional flow.
    """

    def __init__(self, loc=None, scale_diag=None, *, dtype=None):
        if loc is None and scale_diag is None:
            raise ValueError("MultivariateNormalDiag: give loc, scale_diag or both (they fix the dimension)")
        self.dtype = resolve_dtype(dtype, loc, scale_diag, where=type(self).__name__)
        if loc is None:
            loc = np.zeros(np.shape(scale_diag)[-1:], dtype=self.dtype)
        if scale_diag is None:
            scale_diag = np.ones(np.shape(loc)[-1:], dtype=self.dtype)
        self.loc = np.array(as_float_array(loc, self.dtype, "MultivariateNormalDiag", "loc"), dtype=self.dtype)
        self.scale_diag = _positive(scale_diag, self.dtype, "MultivariateNormalDiag", "scale_diag")
        if self.loc.ndim < 1 or self.scale_diag.ndim < 1:
            raise ValueError("MultivariateNormalDiag: loc and scale_diag must be vectors (..., d)")
        full = _broadcast("MultivariateNormalDiag", self.loc, self.scale_diag, "loc", "scale_diag")
        self.batch_shape, self.event_shape = full[:-1], full[-1:]

    def _log_prob(self, x):
        z = (x - self.loc) / self.scale_diag
        per_dim = -0.5 * z * z - np.log(self.scale_diag) - _HALF_LOG_2PI
        return per_dim.sum(axis=-1)

    def _log_prob_grad(self, x):
        return -(x - self.loc) / self.scale_diag ** 2

    def _sample(self, shape, rng):
        z = rng.standard_normal(shape + self.batch_shape + self.event_shape, dtype=self.dtype)
        return self.loc + self.scale_diag * z

    def mean(self):
        return np.broadcast_to(self.loc, self.batch_shape + self.event_shape).copy()

    def stddev(self):
        return np.broadcast_to(self.scale_diag, self.batch_shape + self.event_shape).copy()

    def covariance(self):
        s = self.stddev()
        return s[..., :, None] * np.eye(s.shape[-1], dtype=self.dtype) * s[..., None, :]

    def entropy(self):
        return (0.5 + _HALF_LOG_2PI + np.log(np.broadcast_to(self.scale_diag, self.batch_shape + self.event_shape))
                ).sum(axis=-1)

    def lower(self):
        from ..kernels.specs import StandardNormalSpec, Unsupported
        if self.batch_shape != () or dict(self.parameters()) or not (np.all(self.loc == 0)
                                                                      and np.all(self.scale_diag == 1)):
            raise Unsupported("the base distribution is not a standard MultivariateNormalDiag")
        return StandardNormalSpec(int(self.event_shape[0]))

    def __repr__(self):
        return f"MultivariateNormalDiag(loc={self.loc}, scale_diag={self.scale_diag})"
