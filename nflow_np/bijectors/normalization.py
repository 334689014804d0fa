"""Normalization layers as bijectors: batch normalization (RealNVP) and activation normalization (Glow).

Both are per-feature affine maps of vectors (``event_ndims = 1``), so their
log-det is one constant for every vector of a batch. In the protocol's names
``inverse(y) -> x`` maps a data point ``y`` to the base space, the direction in
which a flow normalizes its data while training by maximum likelihood.
"""

import numpy as np

from .._validation import check_event_shape, check_finite, resolve_dtype
from .base import PassBijector

# ActNorm's guard against a zero standard deviation, as in Glow (added to std, not to the variance).
_STD_GUARD = 1e-6


def _check_features(features, where):
    if isinstance(features, (bool, np.bool_)) or not isinstance(features, (int, np.integer)):
        raise TypeError(f"{where}: features must be a positive int; got {features!r}")
    if features < 1:
        raise ValueError(f"{where}: features must be a positive int; got {features}")
    return int(features)


class _FeatureBijector(PassBijector):
    """A per-feature map of vectors of a fixed size ``features``."""

    event_ndims = 1

    def __init__(self, features, *, dtype, name):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        self.features = _check_features(features, self.name)

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _check(self, arr, method, argname):
        # A Chain calls the private passes directly after checking only its own
        # input: checking here names the member whose size does not fit.
        self._check_input_shape(arr, f"{self.name}.{method}", argname)

    def _rows(self, arr):
        return arr.reshape(-1, self.features)

    @staticmethod
    def _constant_log_det(value, like):
        return np.full(like.shape[:-1], value, dtype=like.dtype)


class BatchNorm(_FeatureBijector):
    """Batch normalization as a bijector (RealNVP).

    With ``y`` a data vector and ``x`` its base-space image, per feature::

        inverse:  x = exp(log_gamma) * (y - mu) / sqrt(var + eps) + beta
        forward:  y = (x - beta) * exp(-log_gamma) * sqrt(var + eps) + mu

    inverse log-det ``sum(log_gamma - 0.5 * log(var + eps))``, the same for
    every vector, and the forward log-det its negative.

    Which statistics ``(mu, var)``:

    - the **inverse** in training mode (``training = True``, the default) on a
      batch of at least two vectors uses the batch's mean and biased variance
      over all leading axes; its log-det and its VJP then depend on every
      vector of the batch, and the VJP differentiates through ``mu`` and
      ``var`` (the standard batch-norm backward plus the log-det's dependence
      on ``var``);
    - otherwise (eval mode, or a batch of one vector) it uses the running
      statistics ``running_mean`` and ``running_var``;
    - the **forward** always uses the running statistics, in both modes:
      sampling never depends on the batch it is drawn in. In training mode
      ``forward`` is therefore not the inverse of ``inverse`` on a batch;
      in eval mode it is.

    The running statistics are buffers, not parameters: each data-to-base
    pass in training mode on a batch of two or more vectors (``inverse``,
    ``inverse_and_log_det``, ``inverse_vjp`` and the private
    ``_inverse``/``_inverse_and_log_det``/``_inverse_pass`` a ``Chain`` calls)
    updates them once, in place, as
    ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance for ``running_var`` (as PyTorch does). The
    backward passes, ``inverse_log_det_jacobian`` and every pass in eval mode
    leave them alone. A training step that evaluates the same batch twice
    (``log_prob`` and then ``inverse_vjp``, say) therefore updates them twice;
    ``momentum=0.0`` freezes them.

    :func:`nflow_np.testing.check_bijector` assumes the vectors of a batch are
    independent, so it applies in eval mode only (``bijector.eval()``).

    Parameters
    ----------
    features : int
        The event size ``d``.
    momentum : float
        Weight of a new batch in the running averages, in ``[0, 1]``.
    eps : float
        Added to the variance, ``> 0``.
    dtype : dtype
        float64 (default) or float32; parameters and buffers take it.
    name : str, optional

    Attributes
    ----------
    params : {"log_gamma", "beta"}
        Arrays of shape ``(features,)``, zeros at construction.
    running_mean, running_var : ndarray, shape (features,)
        The buffers, zeros and ones at construction; updated in place.
    training : bool
        Set by :meth:`train` and :meth:`eval`.

    References
    ----------
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, section 3.7.
    Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    """

    def __init__(self, features, *, momentum=0.1, eps=1e-5, dtype=np.float64, name=None):
        super().__init__(features, dtype=dtype, name=name)
        momentum, eps = float(momentum), float(eps)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{self.name}: momentum must lie in [0, 1]; got {momentum}")
        if not (np.isfinite(eps) and eps > 0.0):
            raise ValueError(f"{self.name}: eps must be positive and finite; got {eps}")
        self.momentum = momentum
        self.eps = eps
        d = self.features
        self.params["log_gamma"] = np.zeros(d, dtype=self.dtype)
        self.params["beta"] = np.zeros(d, dtype=self.dtype)
        self.running_mean = np.zeros(d, dtype=self.dtype)
        self.running_var = np.ones(d, dtype=self.dtype)
        self.training = True

    # ------------------------------------------------------------------ modes and buffers
    def train(self, mode=True):
        """Set training mode (batch statistics on the inverse); returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode (running statistics everywhere); returns ``self``."""
        return self.train(False)

    def buffers(self):
        """Yield ``(name, array)`` for the non-trainable state (for checkpoints)."""
        yield "running_mean", self.running_mean
        yield "running_var", self.running_var

    # ------------------------------------------------------------------ statistics
    def _uses_batch_statistics(self, y):
        return self.training and int(np.prod(y.shape[:-1])) >= 2

    def _statistics(self, y, update):
        """``(mu, var, from_batch)`` for an inverse pass over ``y``; updates the buffers if asked."""
        if not self._uses_batch_statistics(y):
            self._running_scale("inverse")
            return self.running_mean.copy(), self.running_var.copy(), False
        rows = self._rows(y)
        mu = rows.mean(axis=0)
        centered = rows - mu
        var = (centered * centered).mean(axis=0)
        if update:
            n = rows.shape[0]
            m = self.momentum
            self.running_mean *= 1.0 - m
            self.running_mean += m * mu
            self.running_var *= 1.0 - m
            self.running_var += (m * n / (n - 1.0)) * var
        return mu, var, True

    def _running_scale(self, method):
        check_finite(self.running_mean, f"{self.name}.{method}", "running_mean")
        if not np.all(self.running_var >= 0):
            raise ValueError(f"{self.name}.{method}: running_var must be non-negative; got {self.running_var}")
        return np.sqrt(self.running_var + self.eps)

    def _log_det(self, var):
        """The inverse log-det of one vector."""
        return (self.params["log_gamma"] - 0.5 * np.log(var + self.eps)).sum()

    # ------------------------------------------------------------------ inverse: data -> base
    def _inverse_pass(self, y):
        self._check(y, "inverse", "y")
        mu, var, from_batch = self._statistics(y, update=True)
        std = np.sqrt(var + self.eps)
        normalized = (y - mu) / std
        x = np.exp(self.params["log_gamma"]) * normalized + self.params["beta"]
        return x, self._constant_log_det(self._log_det(var), x), (normalized, std, from_batch)

    def _inverse_log_det(self, y):
        self._check(y, "inverse_log_det_jacobian", "y")
        _, var, _ = self._statistics(y, update=False)
        return self._constant_log_det(self._log_det(var), y)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        normalized, std, from_batch = ctx
        shape = grad_x.shape
        gamma = np.exp(self.params["log_gamma"])
        g = self._rows(grad_x)
        xhat = self._rows(normalized)
        total_ld = grad_log_det.sum()
        grad_beta = g.sum(axis=0)
        grad_log_gamma = (g * xhat).sum(axis=0) * gamma + total_ld
        grad_xhat = g * gamma
        if from_batch:
            # d/dy of mu and var (both means over the n rows), and of the log-det's -0.5 log(var + eps)
            n = g.shape[0]
            grad_y = (grad_xhat - grad_xhat.mean(axis=0)
                      - xhat * ((grad_xhat * xhat).mean(axis=0) + total_ld / n)) / std
        else:
            grad_y = grad_xhat / std
        return grad_y.reshape(shape), {"log_gamma": grad_log_gamma, "beta": grad_beta}

    # ------------------------------------------------------------------ forward: base -> data
    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        mu = self.running_mean.copy()
        gain = np.exp(-self.params["log_gamma"]) * self._running_scale("forward")
        centered = (x - self.params["beta"]) * gain
        y = centered + mu
        return y, self._constant_log_det(-self._log_det(self.running_var), y), (centered, gain)

    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        self._running_scale("forward_log_det_jacobian")
        return self._constant_log_det(-self._log_det(self.running_var), x)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        centered, gain = ctx
        g = self._rows(grad_y)
        grad_x = grad_y * gain
        grad_beta = -self._rows(grad_x).sum(axis=0)
        grad_log_gamma = -(g * self._rows(centered)).sum(axis=0) - grad_log_det.sum()
        return grad_x, {"log_gamma": grad_log_gamma, "beta": grad_beta}

    def __repr__(self):
        mode = "train" if self.training else "eval"
        return f"{super().__repr__()[:-1]}, mode={mode})"

    def lower(self, d):
        from ..kernels.specs import BatchNormSpec
        from ..kernels.specs import Unsupported
        if self.features != d:
            raise Unsupported(f"{self.name} acts on {self.features} features, the flow on {d}")
        return BatchNormSpec(params=self.params, state=self, features=self.features, eps=self.eps,
                             momentum=self.momentum)


class ActNorm(_FeatureBijector):
    """Activation normalization (Glow): a per-feature affine map with data-dependent initialization.

    ``forward: y = x * exp(log_scale) + shift``, forward log-det ``sum(log_scale)``;
    ``inverse: x = (y - shift) * exp(-log_scale)``, log-det ``-sum(log_scale)``.

    Initialization: the first data-to-base call while ``initialized`` is False
    (``inverse``, ``inverse_and_log_det``, ``inverse_log_det_jacobian``,
    ``inverse_vjp``, or the private passes a ``Chain`` calls), or an explicit
    :meth:`initialize`, sets ``shift`` to the batch mean and ``log_scale`` to
    ``log(std + 1e-6)`` (biased std over all leading axes), writing into the
    existing arrays so that an optimizer holding them sees the values; the
    inverse of that batch then has zero mean and unit variance per feature.
    A first batch of a single vector sets ``shift`` only (its spread is
    undefined; ``log_scale`` stays 0); an empty one initializes nothing. The
    initialization is not differentiated: the VJPs are those of the affine map
    at the current parameters. A forward call before any data sees the
    identity map and does not initialize.

    Parameters
    ----------
    features : int
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    Attributes
    ----------
    params : {"log_scale", "shift"}
        Arrays of shape ``(features,)``, zeros until initialization.
    initialized : bool

    References
    ----------
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018, section 3.1.
    """

    def __init__(self, features, *, dtype=np.float64, name=None):
        super().__init__(features, dtype=dtype, name=name)
        self.params["log_scale"] = np.zeros(self.features, dtype=self.dtype)
        self.params["shift"] = np.zeros(self.features, dtype=self.dtype)
        self.initialized = False

    # ------------------------------------------------------------------ initialization
    def initialize(self, y):
        """Initialize from the data batch ``y`` (shape ``(..., features)``), even if already initialized."""
        self._initialize(self._prepare(y, "initialize", "y"))
        return self

    def _initialize(self, y):
        rows = self._rows(y)
        if rows.shape[0] == 0:
            return
        # accumulate in float64 so that a float32 batch's moments are not rounded twice
        self.params["shift"][...] = rows.mean(axis=0, dtype=np.float64)
        if rows.shape[0] >= 2:
            self.params["log_scale"][...] = np.log(rows.std(axis=0, dtype=np.float64) + _STD_GUARD)
        self.initialized = True

    def _maybe_initialize(self, y, method):
        self._check(y, method, "y")
        if not self.initialized:
            self._initialize(y)

    # ------------------------------------------------------------------ passes
    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        log_scale = self.params["log_scale"]
        y = x * np.exp(log_scale) + self.params["shift"]
        return y, self._constant_log_det(log_scale.sum(), y), x

    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        return self._constant_log_det(self.params["log_scale"].sum(), x)

    def _inverse_pass(self, y):
        self._maybe_initialize(y, "inverse")
        log_scale = self.params["log_scale"]
        x = (y - self.params["shift"]) * np.exp(-log_scale)
        return x, self._constant_log_det(-log_scale.sum(), x), x

    def _inverse_log_det(self, y):
        self._maybe_initialize(y, "inverse_log_det_jacobian")
        return self._constant_log_det(-self.params["log_scale"].sum(), y)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x = ctx
        scale = np.exp(self.params["log_scale"])
        g = self._rows(grad_y)
        grad_log_scale = (g * self._rows(x)).sum(axis=0) * scale + grad_log_det.sum()
        return grad_y * scale, {"log_scale": grad_log_scale, "shift": g.sum(axis=0)}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x = ctx
        grad_y = grad_x * np.exp(-self.params["log_scale"])
        grad_log_scale = -(self._rows(grad_x) * self._rows(x)).sum(axis=0) - grad_log_det.sum()
        return grad_y, {"log_scale": grad_log_scale, "shift": -self._rows(grad_y).sum(axis=0)}

    def lower(self, d):
        from ..kernels.specs import ActNormSpec
        return ActNormSpec(params=self.params, state=self)
