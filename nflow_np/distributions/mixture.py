"""A trainable mixture of diagonal Gaussians over vector events."""

import numpy as np

from .._validation import as_float_array, resolve_dtype
from .base import Distribution

_HALF_LOG_2PI = float(0.5 * np.log(2.0 * np.pi))


def _log_softmax(logits, axis=-1):
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


class GaussianMixture(Distribution):
    """A mixture of ``k`` Gaussians with diagonal covariances over vectors of size ``d``.

    ``p(x) = sum_j w_j N(x; mu_j, diag(s_j)^2)``, computed in log space as
    ``log p(x) = logsumexp_j (log w_j + log N(x; mu_j, diag(s_j)^2))`` so that
    points far in the tails, where every component's density underflows,
    keep a finite, exact log-density; where the log-density itself lies below
    the dtype's range (``|x - mu_j| / s_j`` beyond ~1e154 in float64) it is
    ``-inf``, never NaN. Event shape ``(d,)``, batch shape ``()``
    (TensorFlow Probability's ``MixtureSameFamily`` of ``MultivariateNormalDiag``).

    Parameters
    ----------
    weights : array, shape (k,)
        Mixture weights: positive and summing to 1 (within ``1e-6``; they are
        then renormalized exactly). Unnormalized weights are refused rather
        than silently rescaled. A weight of 0 is refused too: its logit would
        be -inf; drop the component instead.
    locs : array, shape (k, d)
        Component means.
    scales : array, shape (k, d), (k,) or scalar
        Positive component standard deviations, per coordinate (``(k, d)``),
        one per component (``(k,)``, isotropic) or one for all (scalar).
    dtype : float32 or float64, optional
        Default: the dtype of float ndarray arguments, else float64.

    Notes
    -----
    The trainable parameters are unconstrained, so that an optimizer step can
    never make them invalid: ``params = {"logits", "locs", "log_scales"}``
    with ``weights = softmax(logits)`` and ``scales = exp(log_scales)``.
    ``_log_prob_param_grads(x, grad_lp)`` gives their gradients, which maximum
    likelihood (:func:`nflow_np.train.fit`) uses. Samples are not
    reparameterizable in the weights, so the reverse KL
    (:func:`nflow_np.train.fit_to_target`) refuses a flow on this base.

    References
    ----------
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP" (2017), on
    flows over non-Gaussian bases; Bishop, "Pattern Recognition and Machine
    Learning" (2006), section 9.2, for the mixture's gradients.
    """

    def __init__(self, weights, locs, scales=1.0, *, dtype=None):
        where = type(self).__name__
        self.dtype = resolve_dtype(dtype, weights, locs, scales, where=where)
        weights = np.array(as_float_array(weights, self.dtype, where, "weights"), dtype=self.dtype)
        locs = np.array(as_float_array(locs, self.dtype, where, "locs"), dtype=self.dtype)
        scales = np.array(as_float_array(scales, self.dtype, where, "scales"), dtype=self.dtype)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"{where}: weights must be a non-empty vector (k,); got shape {weights.shape}")
        k = weights.size
        if locs.ndim != 2 or locs.shape[0] != k or locs.shape[1] == 0:
            raise ValueError(f"{where}: locs must have shape (k, d) = ({k}, d) to match {k} weights; "
                             f"got {locs.shape}")
        d = locs.shape[1]
        if scales.ndim == 1 and scales.shape == (k,):
            scales = scales[:, None]    # one isotropic scale per component
        if scales.ndim > 2 or scales.ndim == 1 and scales.size != 1:
            raise ValueError(f"{where}: scales must have shape ({k}, {d}), ({k},) or be a scalar; got {scales.shape}")
        try:
            scales = np.broadcast_to(scales, (k, d))
        except ValueError:
            raise ValueError(f"{where}: scales must have shape ({k}, {d}), ({k},) or be a scalar; "
                             f"got {scales.shape}") from None
        if not np.all(weights > 0):
            bad = int(np.argmax(~(weights > 0)))
            raise ValueError(f"{where}: weights must be positive (drop a component of weight 0); "
                             f"got {weights[bad]} at index {bad}")
        total = float(np.sum(weights, dtype=np.float64))
        if abs(total - 1.0) > max(1e-6, 16 * k * float(np.finfo(self.dtype).eps)):
            raise ValueError(f"{where}: weights must sum to 1; got sum {total!r} (divide by the sum to normalize)")
        if not np.all(scales > 0):
            idx = np.unravel_index(int(np.argmax(~(scales > 0))), scales.shape)
            raise ValueError(f"{where}: scales must be positive; got {scales[idx]} at index {tuple(map(int, idx))}")
        log_w = np.log(weights.astype(np.float64))
        self.params = {
            "logits": _log_softmax(log_w).astype(self.dtype),
            "locs": locs.copy(),
            "log_scales": np.log(scales).astype(self.dtype),
        }
        self.batch_shape = ()
        self.event_shape = (d,)

    # ---------------------------------------------------------------- views of the parameters
    @property
    def num_components(self):
        return self.params["locs"].shape[0]

    @property
    def log_weights(self):
        """log of the mixture weights, normalized (``log_softmax(logits)``)."""
        return _log_softmax(self.params["logits"])

    @property
    def weights(self):
        return np.exp(self.log_weights)

    @property
    def locs(self):
        return self.params["locs"]

    @property
    def scales(self):
        return np.exp(self.params["log_scales"])

    # ---------------------------------------------------------------- densities
    def _components(self, x):
        """Standardized points (..., k, d) and the joint log-densities log w_j + log N_j(x), shape (..., k).

        Far enough out (|z| beyond ~1e154 in float64) ``z * z`` overflows: the joint log-density is then
        -inf, which is its value rounded to the dtype.
        """
        log_scales = self.params["log_scales"]
        with np.errstate(over="ignore"):
            z = (x[..., None, :] - self.params["locs"]) * np.exp(-log_scales)
            d = self.event_shape[0]
            comp = -0.5 * np.sum(z * z, axis=-1) - np.sum(log_scales, axis=-1) - d * _HALF_LOG_2PI
        return z, comp + self.log_weights

    @staticmethod
    def _logsumexp(joint):
        top = np.max(joint, axis=-1, keepdims=True)
        # where every component is -inf, so is the sum (shifting by -inf would give NaN)
        top = np.where(np.isfinite(top), top, 0.0).astype(joint.dtype, copy=False)
        with np.errstate(divide="ignore"):
            return (top + np.log(np.sum(np.exp(joint - top), axis=-1, keepdims=True)))[..., 0]

    def _log_prob(self, x):
        return self._logsumexp(self._components(x)[1])

    def _responsibilities(self, x):
        """Posterior component probabilities r_j(x) = p(j | x), shape (..., k), and z."""
        z, joint = self._components(x)
        return z, np.exp(joint - self._logsumexp(joint)[..., None])

    def _log_prob_grad(self, x):
        z, r = self._responsibilities(x)
        # d log p / dx = sum_j r_j * (-(x - mu_j) / s_j^2)
        return -np.sum(r[..., None] * z * np.exp(-self.params["log_scales"]), axis=-2)

    def _log_prob_param_grads(self, x, grad_lp):
        """Gradients of ``sum(grad_lp * log_prob(x))`` w.r.t. ``params``, by name.

        ``d/d logits_j = r_j - w_j``, ``d/d locs_j = r_j (x - mu_j) / s_j^2`` and
        ``d/d log_scales_j = r_j (z_j^2 - 1)`` with ``z_j = (x - mu_j) / s_j`` and
        the responsibilities ``r_j = p(j | x)``.
        """
        z, r = self._responsibilities(x)
        g = np.broadcast_to(np.asarray(grad_lp, dtype=self.dtype), r.shape[:-1])
        lead = tuple(range(r.ndim - 1))
        gr = g[..., None] * r
        return {
            "logits": (gr.sum(axis=lead) - g.sum() * self.weights).astype(self.dtype, copy=False),
            "locs": (np.sum(gr[..., None] * z, axis=lead) * np.exp(-self.params["log_scales"])
                     ).astype(self.dtype, copy=False),
            "log_scales": np.sum(gr[..., None] * (z * z - 1), axis=lead).astype(self.dtype, copy=False),
        }

    # ---------------------------------------------------------------- sampling and moments
    def _sample(self, shape, rng):
        # inverse CDF of the categorical (float64 cumulative weights), then the chosen Gaussian
        cumulative = np.cumsum(np.exp(_log_softmax(self.params["logits"].astype(np.float64))))
        u = rng.random(shape)
        component = np.minimum(np.searchsorted(cumulative, u, side="right"), self.num_components - 1)
        eps = rng.standard_normal(shape + self.event_shape, dtype=self.dtype)
        return self.locs[component] + self.scales[component] * eps

    def mean(self):
        return self.weights @ self.locs

    def covariance(self):
        """``sum_j w_j (diag(s_j^2) + mu_j mu_j^T) - mean mean^T``, shape (d, d)."""
        w, mu, var = self.weights, self.locs, self.scales ** 2
        centered = mu - self.mean()
        return (np.diag(w @ var) + (w[:, None] * centered).T @ centered).astype(self.dtype, copy=False)

    def stddev(self):
        return np.sqrt(np.diagonal(self.covariance())).copy()

    def __repr__(self):
        return (f"GaussianMixture(weights={self.weights}, locs={self.locs.tolist()}, "
                f"scales={self.scales.tolist()})")
