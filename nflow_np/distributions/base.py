"""The distribution protocol shared by base distributions and flows."""

import warnings

import numpy as np

from .._validation import as_float_array, as_generator, as_sample_shape


class Distribution:
    """Base class of distributions.

    A distribution has a ``batch_shape`` (independent distributions side by
    side) and an ``event_shape`` (the shape of one draw); ``sample(n)``
    returns ``(n,) + batch_shape + event_shape`` and ``log_prob(x)`` returns
    one value per event: ``x.shape[:x.ndim - len(event_shape)]``.
    """

    dtype = np.dtype(np.float64)

    @property
    def event_ndims(self):
        return len(self.event_shape)

    @property
    def name(self):
        return type(self).__name__

    def parameters(self):
        """Yield ``(dotted_name, array)`` for trainable arrays (none for fixed base distributions)."""
        yield from getattr(self, "params", {}).items()

    def lower(self):
        """The spec the compiled engine evaluates this base as (:mod:`nflow_np.kernels.specs`); raises
        :class:`~nflow_np.kernels.specs.Unsupported` when it has none."""
        from ..kernels.specs import Unsupported
        raise Unsupported(f"the base distribution {self.name} is not compiled")

    # ---- validation
    def _prepare(self, x, method):
        where = f"{self.name}.{method}"
        arr = as_float_array(x, self.dtype, where, "x")
        full = self.batch_shape + self.event_shape
        k = self.event_ndims
        if arr.ndim < k or (k and arr.shape[arr.ndim - k:] != self.event_shape):
            raise ValueError(f"{where}: x must have shape (..., {', '.join(map(str, self.event_shape))}) "
                             f"for event shape {self.event_shape}; got {arr.shape}")
        try:
            np.broadcast_shapes(arr.shape, full)
        except ValueError:
            raise ValueError(f"{where}: x of shape {arr.shape} does not broadcast against the batch and event "
                             f"shape {full}") from None
        return arr

    # ---- public API
    def log_prob(self, x):
        """Log-density at ``x``, one value per event."""
        return self._log_prob(self._prepare(x, "log_prob"))

    def prob(self, x):
        """Density at ``x``."""
        return np.exp(self.log_prob(x))

    def sample(self, sample_shape=(), rng=None):
        """Draw ``sample_shape`` independent samples; ``rng`` is a Generator or an int seed.

        A draw beyond the dtype's range (a ``Normal`` whose scale is near the
        largest float) comes back as ``inf``, with a ``RuntimeWarning`` that
        says how many did.
        """
        shape = () if isinstance(sample_shape, tuple) and not sample_shape else \
            as_sample_shape(sample_shape, f"{self.name}.sample")
        with np.errstate(over="ignore", invalid="ignore"):
            x = self._sample(shape, as_generator(rng))
        return warn_if_not_finite(x, f"{self.name}.sample", f"they lie beyond the {self.dtype} range")

    def sample_and_log_prob(self, sample_shape=(), rng=None):
        """Samples and their log-densities in one pass."""
        x = self.sample(sample_shape, rng)
        return x, self._log_prob(x)

    def cdf(self, x):
        """Cumulative distribution function (scalar events)."""
        return np.exp(self.log_cdf(x))

    def log_cdf(self, x):
        """log of the CDF, accurate far into the lower tail."""
        return self._log_cdf(self._prepare(x, "log_cdf"))

    def survival_function(self, x):
        """1 - CDF, computed without cancellation."""
        return np.exp(self._log_survival(self._prepare(x, "survival_function")))

    def _log_cdf(self, x):
        raise ValueError(f"{self.name} has no CDF (only scalar distributions do)")

    def _log_survival(self, x):
        raise ValueError(f"{self.name} has no CDF (only scalar distributions do)")

    def _log_prob_grad(self, x):
        """d log_prob / dx (the score), for backpropagation through flows."""
        raise ValueError(f"{self.name} does not provide the gradient of its log-density")


def warn_if_not_finite(samples, where, cause, stacklevel=3):
    """``samples``, after a ``RuntimeWarning`` naming ``where`` and ``cause`` if any value is inf or NaN."""
    bad = ~np.isfinite(samples)
    if np.any(bad):
        warnings.warn(f"{where}: {int(bad.sum())} of {bad.size} sample values are not finite: {cause}",
                      RuntimeWarning, stacklevel=stacklevel)
    return samples
