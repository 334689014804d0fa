"""A trainable Student's t base distribution with independent coordinates (heavy tails)."""

import numpy as np

from .._special import _scipy_special
from .._validation import as_float_array, resolve_dtype
from .base import Distribution

_HALF_LOG_PI = float(0.5 * np.log(np.pi))


class StudentT(Distribution):
    """Independent Student's t coordinates: vector events of size ``d``.

    Per coordinate, with ``t = (x - loc) / scale`` and ``nu = df``::

        log p = lgamma((nu + 1) / 2) - lgamma(nu / 2) - log(nu pi) / 2 - log(scale)
                - (nu + 1) / 2 * log1p(t^2 / nu)

    and ``log_prob`` sums over the ``d`` coordinates. A heavy-tailed base lets a
    flow model heavy-tailed data without extreme layers.

    ``df``, ``loc`` and ``scale`` broadcast together to the event shape, which
    must be a vector ``(d,)``: ``StudentT(5.0, np.zeros(d))`` is a standard
    d-dimensional base. Each coordinate has its own parameters.

    Parameters
    ----------
    df : array or float
        Positive, finite degrees of freedom (``df -> inf`` is the normal; use
        :class:`MultivariateNormalDiag` for it).
    loc : array or float, default 0
    scale : array or float, default 1
        Positive.
    dtype : float32 or float64, optional
        Default: the dtype of float ndarray arguments, else float64.

    Notes
    -----
    The trainable parameters are unconstrained: ``params = {"log_df", "loc",
    "log_scale"}`` (each of shape ``(d,)``) with ``df = exp(log_df)`` and
    ``scale = exp(log_scale)``; ``_log_prob_param_grads(x, grad_lp)`` gives their
    gradients for maximum likelihood. Samples are not reparameterizable in
    ``df``, so the reverse KL (:func:`nflow_np.train.fit_to_target`) refuses a
    flow on this base.

    References
    ----------
    Jaini, Kobyzev, Yu & Brubaker, "Tails of Lipschitz triangular flows" (ICML 2020);
    Alexanderson & Henter, "Robust model training and generalisation with Studentising
    flows" (2020).
    """

    def __init__(self, df, loc=0.0, scale=1.0, *, dtype=None):
        where = type(self).__name__
        self.dtype = resolve_dtype(dtype, df, loc, scale, where=where)
        df = as_float_array(df, self.dtype, where, "df")
        loc = as_float_array(loc, self.dtype, where, "loc")
        scale = as_float_array(scale, self.dtype, where, "scale")
        try:
            shape = np.broadcast_shapes(df.shape, loc.shape, scale.shape)
        except ValueError:
            raise ValueError(f"{where}: df, loc and scale must broadcast together; got shapes {df.shape}, "
                             f"{loc.shape} and {scale.shape}") from None
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"{where}: df, loc and scale must broadcast to a vector (d,), the event shape; got "
                             f"shape {shape} (e.g. StudentT(df, np.zeros(d)))")
        for name, value in (("df", df), ("scale", scale)):
            if not np.all(value > 0):
                flat = np.ravel(value)
                bad = int(np.argmax(~(flat > 0)))
                raise ValueError(f"{where}: {name} must be positive; got {flat[bad]}"
                                 + (f" at index {bad}" if np.ndim(value) else ""))
        self.params = {
            "log_df": np.log(np.broadcast_to(df, shape)).astype(self.dtype),
            "loc": np.array(np.broadcast_to(loc, shape), dtype=self.dtype),
            "log_scale": np.log(np.broadcast_to(scale, shape)).astype(self.dtype),
        }
        self.batch_shape = ()
        self.event_shape = shape

    # ---------------------------------------------------------------- views of the parameters
    @property
    def df(self):
        return np.exp(self.params["log_df"])

    @property
    def loc(self):
        return self.params["loc"]

    @property
    def scale(self):
        return np.exp(self.params["log_scale"])

    # ---------------------------------------------------------------- densities
    def _standardize(self, x):
        return (x - self.params["loc"]) * np.exp(-self.params["log_scale"])

    def _log_normalizer(self):
        """Per coordinate: lgamma((nu+1)/2) - lgamma(nu/2) - log(nu pi)/2 - log(scale)."""
        nu = self.df
        gammaln = _scipy_special().gammaln
        out = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * self.params["log_df"] - _HALF_LOG_PI \
            - self.params["log_scale"]
        return out.astype(self.dtype, copy=False)

    def _log_prob(self, x):
        t = self._standardize(x)
        nu = self.df
        per_dim = self._log_normalizer() - 0.5 * (nu + 1) * np.log1p(t * t / nu)
        return per_dim.sum(axis=-1)

    def _log_prob_grad(self, x):
        t = self._standardize(x)
        nu = self.df
        return -(nu + 1) * t / (nu + t * t) * np.exp(-self.params["log_scale"])

    def _log_prob_param_grads(self, x, grad_lp):
        """Gradients of ``sum(grad_lp * log_prob(x))`` w.r.t. ``params``, by name.

        With ``t = (x - loc) / scale`` and ``q = t^2 / (nu + t^2)``: ``d/d loc = (nu + 1) t / (scale (nu + t^2))``,
        ``d/d log_scale = (nu + 1) q - 1`` and
        ``d/d log_df = nu / 2 * (digamma((nu+1)/2) - digamma(nu/2) - 1/nu - log1p(t^2/nu) + (nu + 1) q / nu)``.
        """
        t = self._standardize(x)
        nu = self.df
        g = np.broadcast_to(np.asarray(grad_lp, dtype=self.dtype), t.shape[:-1])[..., None]
        lead = tuple(range(t.ndim - 1))
        t2 = t * t
        q = t2 / (nu + t2)
        digamma = _scipy_special().digamma
        psi = (digamma((nu + 1) / 2) - digamma(nu / 2)).astype(self.dtype, copy=False)
        d_nu = 0.5 * (psi - 1 / nu - np.log1p(t2 / nu) + (nu + 1) * q / nu)
        return {
            "log_df": np.sum(g * d_nu, axis=lead) * nu,
            "loc": np.sum(g * (nu + 1) * t / (nu + t2), axis=lead) * np.exp(-self.params["log_scale"]),
            "log_scale": np.sum(g * ((nu + 1) * q - 1), axis=lead),
        }

    # ---------------------------------------------------------------- sampling and moments
    def _sample(self, shape, rng):
        t = rng.standard_t(self.df.astype(np.float64), size=shape + self.event_shape)
        return self.loc + self.scale * t.astype(self.dtype)

    def mean(self):
        """``loc`` where ``df > 1``; NaN (undefined) elsewhere."""
        return np.where(self.df > 1, self.loc, np.nan).astype(self.dtype)

    def variance(self):
        """``scale^2 df / (df - 2)`` where ``df > 2``; infinite for ``1 < df <= 2``; NaN for ``df <= 1``."""
        nu = self.df
        with np.errstate(divide="ignore", invalid="ignore"):
            var = self.scale ** 2 * nu / (nu - 2)
        return np.where(nu > 2, var, np.where(nu > 1, np.inf, np.nan)).astype(self.dtype)

    def stddev(self):
        return np.sqrt(self.variance())

    def entropy(self):
        """Differential entropy, summed over the coordinates."""
        nu = self.df
        special = _scipy_special()
        per_dim = (0.5 * (nu + 1) * (special.digamma((nu + 1) / 2) - special.digamma(nu / 2))
                   + 0.5 * np.log(nu) + special.betaln(nu / 2, 0.5) + self.params["log_scale"])
        return per_dim.sum(axis=-1).astype(self.dtype)

    def __repr__(self):
        return f"StudentT(df={self.df}, loc={self.loc}, scale={self.scale})"
