"""Coupling layers: NICE's additive and RealNVP's affine coupling.

A boolean ``mask`` splits each vector: the masked part ``x_a`` passes through
unchanged and conditions an MLP, which transforms the other part ``x_b``.
Both directions take one network call, and the Jacobian is triangular, so the
log-det is the sum of the log-scales.
"""

import numpy as np

from .._validation import check_event_shape
from ..nn.mlp import MLP
from .base import PassBijector


def _split_mask(mask, where):
    mask = np.asarray(mask)
    if mask.ndim != 1 or mask.dtype.kind not in "bi":
        raise ValueError(f"{where}: mask must be a 1-D boolean array; got {mask!r}")
    mask = mask.astype(bool)
    if mask.size < 2 or mask.all() or not mask.any():
        raise ValueError(
            f"{where}: a coupling needs at least 2 dimensions and a mask with both True (conditioning) and "
            f"False (transformed) entries; got {mask.astype(int).tolist()}. For 1-D data use MAF or an "
            f"elementwise flow (nflow_np.flows.MAF(1), or Chain of Shift/Scale/Sigmoid...)")
    return mask


def alternating_mask(dim, parity=0):
    """``[True, False, True, ...]`` (parity 0) or its complement (parity 1)."""
    return (np.arange(dim) % 2) == parity


class _Coupling(PassBijector):
    event_ndims = 1
    _outputs_per_dim = 1

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        self.mask = _split_mask(mask, self.name)
        self.features = self.mask.size
        self._a = np.flatnonzero(self.mask)
        self._b = np.flatnonzero(~self.mask)
        self.net = MLP(self._a.size, self._outputs_per_dim * self._b.size, hidden, activation, rng=rng,
                       dtype=self.dtype, zero_last=True)

    def _children(self):
        return [("net", self.net)]

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _check(self, arr, method):
        check_event_shape(arr, 1, self.features, f"{self.name}.{method}", "x" if method == "forward" else "y")

    def _assemble(self, passthrough, transformed):
        out = np.empty(passthrough.shape[:-1] + (self.features,), dtype=transformed.dtype)
        out[..., self._a] = passthrough
        out[..., self._b] = transformed
        return out

    def _wrap_grads(self, grads):
        return {f"net.{k}": v for k, v in grads.items()}


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling: ``y_b = x_b + t(x_a)``, ``y_a = x_a``; log-det 0.

    Parameters
    ----------
    mask : array of bool, shape (d,)
        True marks the conditioning coordinates (passed through), False the
        transformed ones. Both must be present, so d >= 2.
    hidden : tuple of int
        Hidden widths of the conditioner MLP; its last layer starts at zero, so
        the layer starts as the identity.
    activation : {"relu", "tanh", "elu", "silu"}
    rng : Generator or int, optional
    dtype : float64 (default) or float32

    References: Dinh, Krueger and Bengio, "NICE: Non-linear Independent
    Components Estimation", ICLR 2015 workshop.
    """

    def _forward_pass(self, x):
        self._check(x, "forward")
        xa = x[..., self._a]
        t, cache = self.net.forward_with_cache(xa)
        y = self._assemble(xa, x[..., self._b] + t)
        return y, np.zeros(x.shape[:-1], dtype=x.dtype), cache

    def _inverse_pass(self, y):
        self._check(y, "inverse")
        ya = y[..., self._a]
        t, cache = self.net.forward_with_cache(ya)
        x = self._assemble(ya, y[..., self._b] - t)
        return x, np.zeros(y.shape[:-1], dtype=y.dtype), cache

    def _backward(self, cache, grad_out, sign):
        grad_b = grad_out[..., self._b]
        grad_cond, grads = self.net.backward(cache, sign * grad_b)
        return self._assemble(grad_out[..., self._a] + grad_cond, grad_b), self._wrap_grads(grads)

    def _forward_backward(self, cache, grad_y, grad_log_det):
        return self._backward(cache, grad_y, 1.0)

    def _inverse_backward(self, cache, grad_x, grad_log_det):
        return self._backward(cache, grad_x, -1.0)


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling: ``y_b = x_b * exp(s(x_a)) + t(x_a)``, ``y_a = x_a``; log-det ``sum(s)``.

    The log-scale is soft-clamped, ``s = c * tanh(raw / c)`` with
    ``c = log_scale_clamp`` (3 by default): one layer scales by at most
    ``e^c`` either way, so a bad step cannot blow the scales up to inf/NaN,
    while small log-scales pass through almost unchanged. ``None`` disables it.

    References: Dinh, Sohl-Dickstein and Bengio, "Density estimation using
    Real NVP", ICLR 2017.
    """

    _outputs_per_dim = 2

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, log_scale_clamp=3.0, rng=None,
                 dtype=np.float64, name=None):
        super().__init__(mask, hidden, activation, rng=rng, dtype=dtype, name=name)
        if log_scale_clamp is not None and not log_scale_clamp > 0:
            raise ValueError(f"{self.name}: log_scale_clamp must be positive or None; got {log_scale_clamp}")
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)

    def _shift_and_log_scale(self, conditioner):
        out, cache = self.net.forward_with_cache(conditioner)
        nb = self._b.size
        shift, raw = out[..., :nb], out[..., nb:]
        if self.log_scale_clamp is None:
            return shift, raw, (cache, None)
        squashed = np.tanh(raw / self.log_scale_clamp)
        return shift, self.log_scale_clamp * squashed, (cache, squashed)

    def _net_backward(self, net_ctx, grad_shift, grad_log_scale):
        cache, squashed = net_ctx
        grad_raw = grad_log_scale if squashed is None else grad_log_scale * (1.0 - squashed * squashed)
        return self.net.backward(cache, np.concatenate([grad_shift, grad_raw], axis=-1))

    def _forward_pass(self, x):
        self._check(x, "forward")
        xa, xb = x[..., self._a], x[..., self._b]
        shift, log_scale, net_ctx = self._shift_and_log_scale(xa)
        scale = np.exp(log_scale)
        y = self._assemble(xa, xb * scale + shift)
        return y, log_scale.sum(axis=-1), (xb, scale, net_ctx)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        xb, scale, net_ctx = ctx
        grad_yb = grad_y[..., self._b]
        grad_log_scale = grad_yb * xb * scale + grad_log_det[..., None]
        grad_cond, grads = self._net_backward(net_ctx, grad_yb, grad_log_scale)
        return self._assemble(grad_y[..., self._a] + grad_cond, grad_yb * scale), self._wrap_grads(grads)

    def _inverse_pass(self, y):
        self._check(y, "inverse")
        ya, yb = y[..., self._a], y[..., self._b]
        shift, log_scale, net_ctx = self._shift_and_log_scale(ya)
        inv_scale = np.exp(-log_scale)
        xb = (yb - shift) * inv_scale
        return self._assemble(ya, xb), -log_scale.sum(axis=-1), (xb, inv_scale, net_ctx)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        xb, inv_scale, net_ctx = ctx
        grad_xb = grad_x[..., self._b]
        grad_yb = grad_xb * inv_scale
        grad_log_scale = -grad_xb * xb - grad_log_det[..., None]
        grad_cond, grads = self._net_backward(net_ctx, -grad_yb, grad_log_scale)
        return self._assemble(grad_x[..., self._a] + grad_cond, grad_yb), self._wrap_grads(grads)
