"""Coupling layers: NICE's additive, RealNVP's affine and NSF's rational-quadratic spline coupling.

A boolean ``mask`` splits each vector: the masked part ``x_a`` passes through
unchanged and conditions an MLP, which transforms the other part ``x_b``.
Both directions take one network call, and the Jacobian is triangular, so the
log-det is the sum of the log-scales.
"""

import numpy as np

from .._validation import check_event_shape
from ..kernels.spline import (rqs_forward_backward_numpy, rqs_forward_numpy, rqs_inverse_backward_numpy,
                              rqs_inverse_numpy)
from ..nn.mlp import MLP
from .base import CONTEXT_GRAD, PassBijector
from .spline import SplineSettings


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


def check_context_size(context, where):
    """The ``context=`` argument of a layer or flow constructor as a non-negative int."""
    if isinstance(context, (bool, np.bool_)) or not isinstance(context, (int, np.integer)) or context < 0:
        raise ValueError(f"{where}: context must be a non-negative int (the width of the conditioning input); "
                         f"got {context!r}")
    return int(context)


def net_backward(net, cache, grad_out):
    """``net.backward`` as ``(grad_input, grads)``, the context's gradient moved into ``grads``."""
    result = net.backward(cache, grad_out)
    if len(result) == 2:
        return result
    grad_in, grad_context, grads = result
    grads = dict(grads)
    grads[CONTEXT_GRAD] = grad_context
    return grad_in, grads


def alternating_mask(dim, parity=0):
    """``[True, False, True, ...]`` (parity 0) or its complement (parity 1)."""
    return (np.arange(dim) % 2) == parity


class _Coupling(PassBijector):
    event_ndims = 1
    _outputs_per_dim = 1

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, context=0, rng=None, dtype=np.float64,
                 name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        self.mask = _split_mask(mask, self.name)
        self.features = self.mask.size
        self.context_size = check_context_size(context, self.name)
        self._a = np.flatnonzero(self.mask)
        self._b = np.flatnonzero(~self.mask)
        self.net = MLP(self._a.size, self._net_outputs(self._b.size), hidden, activation, rng=rng,
                       dtype=self.dtype, zero_last=True, context_features=self.context_size)

    def _net_outputs(self, n_transformed):
        return self._outputs_per_dim * n_transformed

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
        return {k if k == CONTEXT_GRAD else f"net.{k}": v for k, v in grads.items()}

    def lower(self, d):
        from ..kernels.specs import CouplingSpec
        return CouplingSpec(conditioned=self._a, transformed=self._b, net=self.net.lower(), transform=self._transform())


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
    context : int, default 0
        Width of a conditioning input: the network then sees ``(x_a, context)``,
        and every pass takes ``context=`` (one row per point, or one row for all).
    rng : Generator or int, optional
    dtype : float64 (default) or float32

    References: Dinh, Krueger and Bengio, "NICE: Non-linear Independent
    Components Estimation", ICLR 2015 workshop.
    """

    def _forward_pass(self, x, context=None):
        self._check(x, "forward")
        xa = x[..., self._a]
        t, cache = self.net.forward_with_cache(xa, context)
        y = self._assemble(xa, x[..., self._b] + t)
        return y, np.zeros(x.shape[:-1], dtype=x.dtype), cache

    def _inverse_pass(self, y, context=None):
        self._check(y, "inverse")
        ya = y[..., self._a]
        t, cache = self.net.forward_with_cache(ya, context)
        x = self._assemble(ya, y[..., self._b] - t)
        return x, np.zeros(y.shape[:-1], dtype=y.dtype), cache

    def _backward(self, cache, grad_out, sign):
        grad_b = grad_out[..., self._b]
        grad_cond, grads = net_backward(self.net, cache, sign * grad_b)
        return self._assemble(grad_out[..., self._a] + grad_cond, grad_b), self._wrap_grads(grads)

    def _forward_backward(self, cache, grad_y, grad_log_det):
        return self._backward(cache, grad_y, 1.0)

    def _inverse_backward(self, cache, grad_x, grad_log_det):
        return self._backward(cache, grad_x, -1.0)

    def _transform(self):
        from ..kernels.specs import AdditiveSpec
        return AdditiveSpec()


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling: ``y_b = x_b * exp(s(x_a)) + t(x_a)``, ``y_a = x_a``; log-det ``sum(s)``.

    The log-scale is soft-clamped, ``s = c * tanh(raw / c)`` with
    ``c = log_scale_clamp`` (3 by default): one layer scales by at most
    ``e^c`` either way, so a bad step cannot blow the scales up to inf/NaN,
    while small log-scales pass through almost unchanged. ``None`` disables it.
    Parameters as in :class:`AdditiveCoupling`, ``context`` included.

    References: Dinh, Sohl-Dickstein and Bengio, "Density estimation using
    Real NVP", ICLR 2017.
    """

    _outputs_per_dim = 2

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, log_scale_clamp=3.0, context=0, rng=None,
                 dtype=np.float64, name=None):
        super().__init__(mask, hidden, activation, context=context, rng=rng, dtype=dtype, name=name)
        if log_scale_clamp is not None and not log_scale_clamp > 0:
            raise ValueError(f"{self.name}: log_scale_clamp must be positive or None; got {log_scale_clamp}")
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)

    def _shift_and_log_scale(self, conditioner, context):
        out, cache = self.net.forward_with_cache(conditioner, context)
        nb = self._b.size
        shift, raw = out[..., :nb], out[..., nb:]
        if self.log_scale_clamp is None:
            return shift, raw, (cache, None)
        squashed = np.tanh(raw / self.log_scale_clamp)
        return shift, self.log_scale_clamp * squashed, (cache, squashed)

    def _net_backward(self, net_ctx, grad_shift, grad_log_scale):
        cache, squashed = net_ctx
        grad_raw = grad_log_scale if squashed is None else grad_log_scale * (1.0 - squashed * squashed)
        return net_backward(self.net, cache, np.concatenate([grad_shift, grad_raw], axis=-1))

    def _forward_pass(self, x, context=None):
        self._check(x, "forward")
        xa, xb = x[..., self._a], x[..., self._b]
        shift, log_scale, net_ctx = self._shift_and_log_scale(xa, context)
        scale = np.exp(log_scale)
        y = self._assemble(xa, xb * scale + shift)
        return y, log_scale.sum(axis=-1), (xb, scale, net_ctx)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        xb, scale, net_ctx = ctx
        grad_yb = grad_y[..., self._b]
        grad_log_scale = grad_yb * xb * scale + grad_log_det[..., None]
        grad_cond, grads = self._net_backward(net_ctx, grad_yb, grad_log_scale)
        return self._assemble(grad_y[..., self._a] + grad_cond, grad_yb * scale), self._wrap_grads(grads)

    def _inverse_pass(self, y, context=None):
        self._check(y, "inverse")
        ya, yb = y[..., self._a], y[..., self._b]
        shift, log_scale, net_ctx = self._shift_and_log_scale(ya, context)
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

    def _transform(self):
        from ..kernels.specs import AffineSpec
        return AffineSpec(self.log_scale_clamp or 0.0)


def spline_transform(kernel, settings, values, params):
    """Apply a spline pass to ``values`` (``(n, m)``) with per-element ``params`` (``(n, m, 3 bins - 1)``)."""
    out = np.empty_like(values)
    log_det = np.empty_like(values)
    kernel(values, *settings.split(params), *settings.args, out, log_det)
    return out, log_det


def spline_backward(kernel, settings, values, params, grad_out, grad_log_det):
    """VJP of :func:`spline_transform`: gradients of its input and of ``params``."""
    grad_in = np.empty_like(values)
    grad_params = np.empty_like(params)
    kernel(values, *settings.split(params), *settings.args, grad_out, grad_log_det, grad_in,
           *settings.split(grad_params))
    return grad_in, grad_params


class SplineCoupling(_Coupling):
    """Coupling with a monotone rational-quadratic spline per transformed coordinate (NSF).

    The network maps ``(x_a, context)`` to ``3 bins - 1`` numbers per
    transformed coordinate: unnormalized bin widths, bin heights and interior
    knot derivatives of a spline ``g`` on ``[-bound, bound]`` (the identity
    outside; see :class:`~nflow_np.bijectors.RationalQuadraticSpline` for the
    parameterization). The density direction evaluates the spline,
    ``x_b = g(y_b)`` with log-det ``sum(log g'(y_b))``; sampling inverts it,
    ``y_b = g^{-1}(x_b)``, by the closed-form root of a quadratic. The last
    network layer starts at zero, which makes every spline the identity.

    Parameters
    ----------
    mask, hidden, activation, context, rng, dtype
        As in :class:`AdditiveCoupling`.
    bins : int, default 8
    bound : float, default 5.0
    min_bin_width, min_bin_height, min_derivative : float, default 1e-3

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
    Flows", NeurIPS 2019.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, bins=8, bound=5.0, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, context=0, rng=None, dtype=np.float64, name=None):
        self.spline = SplineSettings(bins, bound, min_bin_width, min_bin_height, min_derivative,
                                     name or type(self).__name__)
        super().__init__(mask, hidden, activation, context=context, rng=rng, dtype=dtype, name=name)

    def _net_outputs(self, n_transformed):
        return self.spline.per_dim * n_transformed

    def _spline_pass(self, kernel, inp, context, method):
        self._check(inp, method)
        cond, values = inp[..., self._a], inp[..., self._b]
        out, cache = self.net.forward_with_cache(cond, context)
        nb = self._b.size
        params = out.reshape(-1, nb, self.spline.per_dim)
        flat = np.ascontiguousarray(values.reshape(-1, nb))
        transformed, log_det = spline_transform(kernel, self.spline, flat, params)
        result = self._assemble(cond, transformed.reshape(values.shape))
        return result, log_det.sum(axis=1).reshape(inp.shape[:-1]), (flat, params, cache, out.shape)

    def _spline_backward(self, kernel, ctx, grad_out, grad_log_det):
        flat, params, cache, out_shape = ctx
        nb = self._b.size
        grad_values = np.ascontiguousarray(grad_out[..., self._b].reshape(-1, nb))
        grad_ld = np.ascontiguousarray(np.broadcast_to(grad_log_det.reshape(-1, 1), flat.shape))
        grad_in, grad_params = spline_backward(kernel, self.spline, flat, params, grad_values, grad_ld)
        grad_cond, grads = net_backward(self.net, cache, grad_params.reshape(out_shape))
        grad_in = grad_in.reshape(grad_out.shape[:-1] + (nb,))
        return self._assemble(grad_out[..., self._a] + grad_cond, grad_in), self._wrap_grads(grads)

    def _inverse_pass(self, y, context=None):
        return self._spline_pass(rqs_forward_numpy, y, context, "inverse")

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return self._spline_backward(rqs_forward_backward_numpy, ctx, grad_x, grad_log_det)

    def _forward_pass(self, x, context=None):
        return self._spline_pass(rqs_inverse_numpy, x, context, "forward")

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return self._spline_backward(rqs_inverse_backward_numpy, ctx, grad_y, grad_log_det)

    def _transform(self):
        return self.spline.lower()
