"""Masked autoregressive flows (MAF), their inverse (IAF) and autoregressive splines, with a MADE conditioner."""

import numpy as np

from .._validation import check_event_shape
from ..kernels.spline import rqs_forward_backward_numpy, rqs_forward_numpy, rqs_inverse_numpy
from ..nn.mlp import MaskedMLP
from .base import CONTEXT_GRAD, Bijector
from .chain import Invert
from .coupling import check_context_size, net_backward, spline_backward, spline_transform
from .spline import SplineSettings


class _Autoregressive(Bijector):
    """What MAF and the autoregressive spline share: a MADE ``net`` over ``features`` inputs, a one-pass
    density direction (``_inverse_pass``), and a sampling direction that runs it in reverse, the forward
    log-det coming from one density pass at the samples."""

    event_ndims = 1

    def _children(self):
        return [("net", self.net)]

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _inverse(self, y, context=None):
        return self._inverse_pass(y, context)[0]

    def _inverse_and_log_det(self, y, context=None):
        return self._inverse_pass(y, context)[:2]

    def _forward_and_log_det(self, x, context=None):
        y = self._forward(x, context)
        _, log_det, _ = self._inverse_pass(y, context)
        return y, -log_det

    def _forward_pass(self, x, context=None):
        y = self._forward(x, context)
        _, log_det, ctx = self._inverse_pass(y, context)
        return y, -log_det, ctx


class MaskedAutoregressive(_Autoregressive):
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

    With ``context=c`` the MADE network also takes a conditioning input,
    unmasked (every ``t_i, s_i`` may depend on it), and every pass takes
    ``context=``.

    References: Papamakarios, Pavlakou and Murray, "Masked Autoregressive Flow
    for Density Estimation", NeurIPS 2017; Germain et al., "MADE", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, order=None, log_scale_clamp=3.0,
                 context=0, rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        self.context_size = check_context_size(context, self.name)
        if not isinstance(features, (int, np.integer)) or features < 1:
            raise ValueError(f"{self.name}: features must be a positive int; got {features!r}")
        if log_scale_clamp is not None and not log_scale_clamp > 0:
            raise ValueError(f"{self.name}: log_scale_clamp must be positive or None; got {log_scale_clamp}")
        self.features = int(features)
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)
        self.net = MaskedMLP(self.features, hidden, out_per_feature=2, activation=activation, order=order,
                             rng=rng, dtype=self.dtype, zero_last=True, context_features=self.context_size)
        order = np.arange(self.features) if order is None else np.asarray(order)
        # the dimensions in the order they are generated
        self._generation = np.argsort(order)

    def _shift_and_log_scale(self, y, context=None):
        out, cache = self.net.forward_with_cache(y, context)
        d = self.features
        shift, raw = out[..., :d], out[..., d:]
        if self.log_scale_clamp is None:
            return shift, raw, (cache, None)
        squashed = np.tanh(raw / self.log_scale_clamp)
        return shift, self.log_scale_clamp * squashed, (cache, squashed)

    # ---- the density direction: one pass
    def _inverse_pass(self, y, context=None):
        check_event_shape(y, 1, self.features, f"{self.name}.inverse", "y")
        shift, log_scale, net_ctx = self._shift_and_log_scale(y, context)
        inv_scale = np.exp(-log_scale)
        x = (y - shift) * inv_scale
        return x, -log_scale.sum(axis=-1), (x, inv_scale, net_ctx)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, inv_scale, (cache, squashed) = ctx
        grad_direct = grad_x * inv_scale
        grad_log_scale = -grad_x * x - grad_log_det[..., None]
        grad_raw = grad_log_scale if squashed is None else grad_log_scale * (1.0 - squashed * squashed)
        grad_net_in, grads = net_backward(self.net, cache, np.concatenate([-grad_direct, grad_raw], axis=-1))
        return grad_direct + grad_net_in, {k if k == CONTEXT_GRAD else f"net.{k}": v for k, v in grads.items()}

    # ---- the sampling direction: d passes
    def _forward(self, x, context=None):
        check_event_shape(x, 1, self.features, f"{self.name}.forward", "x")
        y = np.zeros_like(x)
        for i in self._generation:
            # dimension i depends only on dimensions generated before it, all set by now
            shift, log_scale, _ = self._shift_and_log_scale(y, context)
            y[..., i] = x[..., i] * np.exp(log_scale[..., i]) + shift[..., i]
        return y

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return autoregressive_forward_backward(self, ctx, grad_y, grad_log_det, 1.0 / ctx[1])

    def lower(self, d):
        from ..kernels.specs import AffineSpec, AutoregressiveSpec
        return AutoregressiveSpec(net=self.net.lower(), transform=AffineSpec(self.log_scale_clamp or 0.0),
                              generation=self._generation)


def autoregressive_forward_backward(layer, ctx, grad_y, grad_log_det, inverse_diagonal):
    """VJP of an autoregressive layer's sequential (sampling) pass from its one-pass inverse ``g``.

    ``ctx`` is the inverse pass's context at ``y = g^-1(x)``, ``inverse_diagonal``
    ``1 / (dg_i/dy_i)``, the inverse of ``J_g``'s diagonal; ``J_g`` is triangular in
    the autoregressive order, so the fixed-point iteration below is exact after
    ``features`` steps, each one backward pass of ``g``.
    """
    # L = <grad_y, y> + grad_ld * S(y), S = -(inverse log-det), y = g^-1(x).
    zeros = np.zeros_like(grad_y)
    grad_s, _ = layer._inverse_backward(ctx, zeros, -np.ones_like(grad_log_det))
    v = grad_y + grad_log_det[..., None] * grad_s
    w = v * inverse_diagonal
    for _ in range(layer.features - 1):
        jtw, _ = layer._inverse_backward(ctx, w, np.zeros_like(grad_log_det))
        w = w + inverse_diagonal * (v - jtw)
    # parameters (and the context, which enters g like a parameter):
    # dL/dp = grad_ld dS/dp - (dg/dp)^T w, one more backward pass
    _, grads = layer._inverse_backward(ctx, -w, -grad_log_det)
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
                 context=0, rng=None, dtype=np.float64, name=None):
        super().__init__(MaskedAutoregressive(features, hidden, activation, order=order,
                                              log_scale_clamp=log_scale_clamp, context=context, rng=rng,
                                              dtype=dtype),
                         name=name or "InverseAutoregressive")
        self.features = self.bijector.features


class SplineAutoregressive(_Autoregressive):
    """Autoregressive rational-quadratic spline (autoregressive NSF) with a MADE conditioner.

    Data ``y`` and base ``x`` are related by ``x_i = g_i(y_i)``, a monotone
    spline whose ``3 bins - 1`` parameters come from ``y_<i`` (in ``order``)
    and the context; see :class:`~nflow_np.bijectors.SplineCoupling` for the
    spline. The density pass (``inverse``) is one network call; sampling
    (``forward``) fills ``y`` in ``features`` sequential calls, each inverting
    one spline in closed form; its VJP solves the triangular system as
    :class:`MaskedAutoregressive`'s does.

    Parameters
    ----------
    features : int
    hidden, activation, order, context, rng, dtype
        As in :class:`MaskedAutoregressive`.
    bins, bound, min_bin_width, min_bin_height, min_derivative
        As in :class:`~nflow_np.bijectors.SplineCoupling`.

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
    Flows", NeurIPS 2019; Germain et al., "MADE", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, bins=8, bound=5.0, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, order=None, context=0, rng=None, dtype=np.float64,
                 name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        self.context_size = check_context_size(context, self.name)
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 1:
            raise ValueError(f"{self.name}: features must be a positive int; got {features!r}")
        self.features = int(features)
        self.spline = SplineSettings(bins, bound, min_bin_width, min_bin_height, min_derivative, self.name)
        self.net = MaskedMLP(self.features, hidden, out_per_feature=self.spline.per_dim, activation=activation,
                             order=order, rng=rng, dtype=self.dtype, zero_last=True,
                             context_features=self.context_size)
        self._generation = np.argsort(self.net.order)

    def _spline_params(self, y, context):
        """Per-coordinate spline parameters ``(n, d, 3 bins - 1)`` (a view of MADE's output) and the cache."""
        out, cache = self.net.forward_with_cache(y, context)
        d = self.features
        # MADE lays its outputs out as (parameter, feature): out[..., k * d + i]
        params = out.reshape(-1, self.spline.per_dim, d).transpose(0, 2, 1)
        return params, cache, out.shape

    def _inverse_pass(self, y, context=None):
        check_event_shape(y, 1, self.features, f"{self.name}.inverse", "y")
        params, cache, out_shape = self._spline_params(y, context)
        flat = np.ascontiguousarray(y.reshape(-1, self.features))
        x, log_det = spline_transform(rqs_forward_numpy, self.spline, flat, params)
        return (x.reshape(y.shape), log_det.sum(axis=1).reshape(y.shape[:-1]),
                (flat, params, cache, out_shape, log_det))

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        flat, params, cache, out_shape, _ = ctx
        d = self.features
        grad_flat = np.ascontiguousarray(grad_x.reshape(-1, d))
        grad_ld = np.ascontiguousarray(np.broadcast_to(grad_log_det.reshape(-1, 1), flat.shape))
        grad_direct, grad_params = spline_backward(rqs_forward_backward_numpy, self.spline, flat, params,
                                                   grad_flat, grad_ld)
        grad_out = grad_params.transpose(0, 2, 1).reshape(out_shape)
        grad_net_in, grads = net_backward(self.net, cache, grad_out)
        grad_y = grad_direct.reshape(grad_x.shape) + grad_net_in
        return grad_y, {k if k == CONTEXT_GRAD else f"net.{k}": v for k, v in grads.items()}

    def _forward(self, x, context=None):
        check_event_shape(x, 1, self.features, f"{self.name}.forward", "x")
        flat = x.reshape(-1, self.features)
        y = np.zeros_like(flat)
        for i in self._generation:
            # coordinate i depends only on coordinates generated before it, all set by now
            params, _, _ = self._spline_params(y.reshape(x.shape), context)
            column, _ = spline_transform(rqs_inverse_numpy, self.spline, np.ascontiguousarray(flat[:, i:i + 1]),
                                         params[:, i:i + 1])
            y[:, i] = column[:, 0]
        return y.reshape(x.shape)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        per_element_log_det = ctx[4].reshape(grad_y.shape)
        return autoregressive_forward_backward(self, ctx, grad_y, grad_log_det, np.exp(-per_element_log_det))

    def lower(self, d):
        from ..kernels.specs import AutoregressiveSpec
        return AutoregressiveSpec(net=self.net.lower(), transform=self.spline.lower(), generation=self._generation)
