"""``TransformedDistribution``: a base distribution pushed through a bijector (a flow)."""

import numpy as np

from ..bijectors.base import Bijector
from .base import Distribution


class TransformedDistribution(Distribution):
    """The distribution of ``bijector.forward(z)`` for ``z ~ distribution``.

    ``log_prob(x) = distribution.log_prob(bijector.inverse(x)) + bijector.inverse_log_det_jacobian(x)``
    and ``sample`` draws from the base and applies ``bijector.forward``, as in
    TensorFlow Probability (whose attribute names ``distribution`` and
    ``bijector`` this keeps).

    The event rank is the larger of the base's and the bijector's: a scalar
    ``Normal`` with batch shape ``(d,)`` under a vector bijector becomes one
    d-dimensional event, its log-densities summed over the last axis.
    """

    def __init__(self, distribution, bijector):
        if not isinstance(distribution, Distribution):
            raise TypeError(f"TransformedDistribution: distribution must be a Distribution; "
                            f"got {type(distribution).__name__}")
        if not isinstance(bijector, Bijector):
            raise TypeError(f"TransformedDistribution: bijector must be a Bijector; got {type(bijector).__name__}")
        if bijector.dtype is not None and bijector.dtype != distribution.dtype:
            raise TypeError(f"TransformedDistribution: the base distribution is {distribution.dtype} but the "
                            f"bijector is {bijector.dtype}; build both with one dtype")
        self.distribution = distribution
        self.bijector = bijector
        self.dtype = distribution.dtype
        full = distribution.batch_shape + distribution.event_shape
        rank = max(distribution.event_ndims, bijector.event_ndims)
        if rank > len(full):
            raise ValueError(f"TransformedDistribution: {bijector.name} acts on events of rank "
                             f"{bijector.event_ndims}, but the base distribution draws shape {full}; give the base "
                             f"a batch or event shape, e.g. MultivariateNormalDiag(np.zeros(d))")
        self.batch_shape = full[:len(full) - rank]
        self.event_shape = full[len(full) - rank:]
        self._base_extra = rank - distribution.event_ndims

    def parameters(self):
        for key, value in self.distribution.parameters():
            yield f"distribution.{key}", value
        for key, value in self.bijector.parameters():
            yield f"bijector.{key}", value

    @property
    def name(self):
        return "TransformedDistribution"

    def _base_log_prob(self, z):
        lp = self.distribution._log_prob(z)
        if self._base_extra:
            lp = lp.sum(axis=tuple(range(lp.ndim - self._base_extra, lp.ndim)))
        return lp

    def _prepare(self, x, method):
        x = super()._prepare(x, method)
        self.bijector._check_input_shape(x, f"{self.name}.{method}", "x")
        return x

    def _log_prob(self, x):
        z, log_det = self.bijector._inverse_and_log_det(x)
        return self._base_log_prob(z) + self.bijector._reduce(log_det, self.event_ndims)

    def _sample(self, shape, rng):
        return self.bijector._forward(self.distribution._sample(shape, rng))

    def sample_and_log_prob(self, sample_shape=(), rng=None):
        """Samples and their log-densities from one forward pass (no inverse needed)."""
        z = self.distribution.sample(sample_shape, rng)
        x, log_det = self.bijector._forward_and_log_det(z)
        return x, self._base_log_prob(z) - self.bijector._reduce(log_det, self.event_ndims)

    def _scalar_check(self, method):
        if self.event_shape != ():
            raise ValueError(f"{self.name}.{method}: the CDF is defined for scalar flows only; "
                             f"this flow has event shape {self.event_shape}")

    def _log_cdf(self, x):
        self._scalar_check("log_cdf")
        z = self.bijector._inverse(x)
        increasing = self.bijector._is_increasing()
        if np.all(increasing):
            return self.distribution._log_cdf(z)
        if not np.any(increasing):
            return self.distribution._log_survival(z)
        return np.where(increasing, self.distribution._log_cdf(z), self.distribution._log_survival(z))

    def _log_survival(self, x):
        self._scalar_check("survival_function")
        z = self.bijector._inverse(x)
        increasing = self.bijector._is_increasing()
        return np.where(increasing, self.distribution._log_survival(z), self.distribution._log_cdf(z))

    def __repr__(self):
        return f"TransformedDistribution(distribution={self.distribution!r}, bijector={self.bijector!r})"
