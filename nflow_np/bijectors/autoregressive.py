"""Masked autoregressive flows (MAF) and their inverse (IAF), with a MADE conditioner."""

import numpy as np

from .._validation import check_event_shape
from ..nn.mlp import MaskedMLP
from .base import Bijector
from .chain import Invert


class MaskedAutoregressive(Bijector):
    """MAF: an affine autoregressive bijector whose shift and log-scale come from a MADE network.

    Data ``y`` and base ``x`` are related by ``y_i = x_i * exp(s_i) + t_i`` with
    ``(t_i, s_i)`` functions of ``y_<i`` (in the autoregressive ``order``).

    - ``inverse`` (data -> base, the density pass) is one network call:
      ``x = (y - t(y)) * exp(-s(y))``, log-det ``-sum(s(y))``.
    - ``forward`` (sampling) fills ``y`` in ``d`` sequential network calls.
      Its VJP needs no unrolled graph: with ``g`` the one-pass inverse,
      ``y = g^-1(x)``, so the input gradient solves ``J_g^T w = v``; ``J_g`` is
      triangular in the autoregressive order with diagonal ``exp(-s)``, so the
      fixed-point iteration ``w <- w + exp(s) (v - J_g^T w)`` is exact after
      ``d`` steps, each one network backward pass.

    The log-scale is soft-clamped, ``s = c * tanh(raw / c)``, as in ``AffineCoupling``.

    References: Papamakarios, Pavlakou and Murray, "Masked Autoregressive Flow
    for Density Estimation", NeurIPS 2017; Germain et al., "MADE", ICML 2015.
    """

    event_ndims = 1

    def __init__(self, features, hidden=(64, 64), activation="relu", *, order=None, log_scale_clamp=3.0,
                 rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        if not isinstance(features, (int, np.integer)) or features < 1:
            raise ValueError(f"{self.name}: features must be a positive int; got {features!r}")
        if log_scale_clamp is not None and not log_scale_clamp > 0:
            raise ValueError(f"{self.name}: log_scale_clamp must be positive or None; got {log_scale_clamp}")
        self.features = int(features)
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)
        self.net = MaskedMLP(self.features, hidden, out_per_feature=2, activation=activation, order=order,
                             rng=rng, dtype=self.dtype, zero_last=True)
        order = np.arange(self.features) if order is None else np.asarray(order)
        # the dimensions in the order they are generated
        self._generation = np.argsort(order)

    def _children(self):
        return [("net", self.net)]

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _shift_and_log_scale(self, y):
        out, cache = self.net.forward_with_cache(y)
        d = self.features
        shift, raw = out[..., :d], out[..., d:]
        if self.log_scale_clamp is None:
            return shift, raw, (cache, None)
        squashed = np.tanh(raw / self.log_scale_clamp)
        return shift, self.log_scale_clamp * squashed, (cache, squashed)

    # ---- the density direction: one pass
    def _inverse_pass(self, y):
        check_event_shape(y, 1, self.features, f"{self.name}.inverse", "y")
        shift, log_scale, net_ctx = self._shift_and_log_scale(y)
        inv_scale = np.exp(-log_scale)
        x = (y - shift) * inv_scale
        return x, -log_scale.sum(axis=-1), (x, inv_scale, net_ctx)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, inv_scale, (cache, squashed) = ctx
        grad_direct = grad_x * inv_scale
        grad_log_scale = -grad_x * x - grad_log_det[..., None]
        grad_raw = grad_log_scale if squashed is None else grad_log_scale * (1.0 - squashed * squashed)
        grad_net_in, grads = self.net.backward(cache, np.concatenate([-grad_direct, grad_raw], axis=-1))
        return grad_direct + grad_net_in, {f"net.{k}": v for k, v in grads.items()}

    def _inverse(self, y):
        return self._inverse_pass(y)[0]

    def _inverse_and_log_det(self, y):
        return self._inverse_pass(y)[:2]

    # ---- the sampling direction: d passes
    def _forward(self, x):
        check_event_shape(x, 1, self.features, f"{self.name}.forward", "x")
        y = np.zeros_like(x)
        for i in self._generation:
            # dimension i depends only on dimensions generated before it, all set by now
            shift, log_scale, _ = self._shift_and_log_scale(y)
            y[..., i] = x[..., i] * np.exp(log_scale[..., i]) + shift[..., i]
        return y

    def _forward_and_log_det(self, x):
        y = self._forward(x)
        _, log_det, _ = self._inverse_pass(y)
        return y, -log_det

    def _forward_pass(self, x):
        y = self._forward(x)
        _, log_det, ctx = self._inverse_pass(y)
        return y, -log_det, ctx

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        # L = <grad_y, y> + grad_ld * S(y), S = sum(s) = -inverse log-det, y = g^-1(x).
        _, inv_scale, _ = ctx
        zeros = np.zeros_like(grad_y)
        grad_s, _ = self._inverse_backward(ctx, zeros, -np.ones_like(grad_log_det))
        v = grad_y + grad_log_det[..., None] * grad_s
        scale = 1.0 / inv_scale
        w = v * scale
        for _ in range(self.features - 1):
            jtw, _ = self._inverse_backward(ctx, w, np.zeros_like(grad_log_det))
            w = w + scale * (v - jtw)
        # parameters: dL/dp = grad_ld dS/dp - (dg/dp)^T w, one more backward pass
        _, grads = self._inverse_backward(ctx, -w, -grad_log_det)
        return w, grads


class InverseAutoregressive(Invert):
    """IAF: the MAF bijector the other way round (TFP's ``Invert(MaskedAutoregressiveFlow)``).

    ``forward`` (sampling) is one network call on the base point:
    ``y = (x - t(x)) * exp(-s(x))``; ``inverse`` (density) takes ``d`` sequential
    calls. Fast sampling with exact log-densities of its own samples (through
    ``sample_and_log_prob``), the natural choice for variational inference.

    References: Kingma et al., "Improved Variational Inference with Inverse
    Autoregressive Flow", NeurIPS 2016.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, order=None, log_scale_clamp=3.0,
                 rng=None, dtype=np.float64, name=None):
        super().__init__(MaskedAutoregressive(features, hidden, activation, order=order,
                                              log_scale_clamp=log_scale_clamp, rng=rng, dtype=dtype),
                         name=name or "InverseAutoregressive")
        self.features = self.bijector.features
