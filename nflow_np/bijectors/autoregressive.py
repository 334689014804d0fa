"""The autoregressive frame (:class:`Autoregressive`): MAF, its inverse (IAF) and autoregressive splines, with a
MADE conditioner."""

import numpy as np

from .._validation import check_event_shape
from .base import CONTEXT_GRAD, Bijector
from .chain import Invert
from .coupling import check_conditioner, check_context_size, masked_conditioner, net_backward, network_init
from .transforms import AffineTransform, CircularSplineTransform, SplineTransform, Transform


class Autoregressive(Bijector):
    """An autoregressive layer: a MADE conditioner and an elementwise transform.

    Data ``y`` and base ``x`` are related coordinate by coordinate,
    ``x_i = f^-1(y_i; theta_i(y_<i, context))``, with ``f`` the ``transform``
    (:mod:`nflow_np.bijectors.transforms`) and its parameters from a MADE
    network over the coordinates before ``i`` in the autoregressive ``order``.

    - ``inverse`` (data -> base, the density pass) is one network call.
    - ``forward`` (sampling) fills ``y`` in ``features`` sequential network
      calls. Its VJP needs no unrolled graph: with ``g`` the one-pass inverse,
      ``y = g^-1(x)``, so the input gradient solves ``J_g^T w = v``; ``J_g`` is
      triangular in the autoregressive order, so a fixed-point iteration is
      exact after ``features`` steps, each one network backward pass.

    Parameters
    ----------
    features : int
    transform : Transform
        ``AffineTransform()`` (MAF), ``SplineTransform()`` (autoregressive
        NSF), ``SinhArcsinhTransform()``, ``AdditiveTransform()`` or your own.
    hidden : tuple of int
        Hidden widths of the MADE network; with ``conditioner="resnet"``,
        ``(width,) * blocks`` (one entry per residual block, all equal).
    activation : {"relu", "tanh", "elu", "silu"}
    order : array of int, optional
        The autoregressive order of the coordinates (default ``0..d-1``).
    context : int, default 0
        Width of a conditioning input, seen unmasked by every output.
    rng : Generator or int, optional
    dtype : float64 (default) or float32
    init : {"random", "identity"}, default "random"
        The conditioner's start (:func:`~nflow_np.bijectors.coupling.network_init`):
        every layer as PyTorch's ``nn.Linear`` (near the identity), or exactly
        the identity (a zero last layer).
    conditioner : {"mlp", "resnet"}, default "mlp"
        The network: MADE (:class:`~nflow_np.nn.MaskedMLP`) or the masked
        residual MADE of Durkan et al. (:class:`~nflow_np.nn.ResidualMADE`);
        both are compiled (without a context; with one, the NumPy passes run).

    References: Papamakarios, Pavlakou and Murray, "Masked Autoregressive Flow
    for Density Estimation", NeurIPS 2017; Germain et al., "MADE", ICML 2015;
    Durkan et al., "Neural Spline Flows", NeurIPS 2019 (residual MADE).
    """

    event_ndims = 1

    def __init__(self, features, transform, hidden=(64, 64), activation="relu", *, order=None, context=0,
                 rng=None, dtype=np.float64, name=None, init="random", conditioner="mlp"):
        super().__init__(dtype=np.dtype(dtype), name=name)
        if not isinstance(transform, Transform):
            raise TypeError(f"{self.name}: transform must be a nflow_np.bijectors.transforms.Transform; "
                            f"got {transform!r}")
        self.transform = transform
        self.context_size = check_context_size(context, self.name)
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 1:
            raise ValueError(f"{self.name}: features must be a positive int; got {features!r}")
        self.features = int(features)
        self.conditioner, hidden = check_conditioner(conditioner, hidden, self.name)
        self.net = masked_conditioner(self.conditioner, self.features, hidden, transform.params_per_coordinate,
                                      activation, order=order, rng=rng, dtype=self.dtype,
                                      context_features=self.context_size, **network_init(init, self.name))
        self.init = init
        # the coordinates in the order they are generated
        self._generation = np.argsort(self.net.order)

    def _children(self):
        return [("net", self.net)]

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _params(self, y, context):
        """Per-coordinate transform parameters ``(..., d, P)`` (a view of MADE's output) and the network cache."""
        out, cache = self.net.forward_with_cache(y, context)
        # MADE lays its outputs out as (parameter, feature): out[..., k * d + i]
        per = self.transform.params_per_coordinate
        return np.swapaxes(out.reshape(out.shape[:-1] + (per, self.features)), -1, -2), cache

    # ---- the density direction: one pass
    def _inverse_pass(self, y, context=None):
        check_event_shape(y, 1, self.features, f"{self.name}.inverse", "y")
        params, cache = self._params(y, context)
        x, log_det, ctx = self.transform.density(y, params)
        return x, log_det.sum(axis=-1), (ctx, cache, log_det)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        transform_ctx, cache, _ = ctx
        grad_direct, grad_params = self.transform.density_backward(transform_ctx, grad_x, grad_log_det[..., None])
        grad_out = np.swapaxes(grad_params, -1, -2).reshape(grad_params.shape[:-2] + (-1,))
        grad_net_in, grads = net_backward(self.net, cache, grad_out)
        return grad_direct + grad_net_in, {k if k == CONTEXT_GRAD else f"net.{k}": v for k, v in grads.items()}

    def _inverse(self, y, context=None):
        return self._inverse_pass(y, context)[0]

    def _inverse_and_log_det(self, y, context=None):
        return self._inverse_pass(y, context)[:2]

    # ---- the sampling direction: d passes
    def _forward(self, x, context=None):
        check_event_shape(x, 1, self.features, f"{self.name}.forward", "x")
        y = np.zeros_like(x)
        for i in self._generation:
            # coordinate i depends only on coordinates generated before it, all set by now
            params, _ = self._params(y, context)
            column, _, _ = self.transform.sampling(x[..., i:i + 1], params[..., i:i + 1, :])
            y[..., i] = column[..., 0]
        return y

    def _forward_and_log_det(self, x, context=None):
        y = self._forward(x, context)
        _, log_det, _ = self._inverse_pass(y, context)
        return y, -log_det

    def _forward_pass(self, x, context=None):
        y = self._forward(x, context)
        _, log_det, ctx = self._inverse_pass(y, context)
        return y, -log_det, ctx

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        # dx_i/dy_i = exp(per-coordinate density log-det)
        return autoregressive_forward_backward(self, ctx, grad_y, grad_log_det, np.exp(-ctx[2]))

    def lower(self, d):
        from ..kernels.specs import AutoregressiveSpec
        return AutoregressiveSpec(net=self.net.lower(), transform=self.transform.lower(),
                                  generation=self._generation)


class MaskedAutoregressive(Autoregressive):
    """MAF: an affine autoregressive bijector whose shift and log-scale come from a MADE network.

    Data ``y`` and base ``x`` are related by ``y_i = x_i * exp(s_i) + t_i`` with
    ``(t_i, s_i)`` functions of ``y_<i`` (in the autoregressive ``order``): the
    density direction is ``x = (y - t(y)) * exp(-s(y))``, log-det ``-sum(s(y))``.
    The log-scale is soft-clamped, ``s = raw / (1 + |raw| / c)`` (or ``c tanh(raw / c)`` with
    ``clamp_shape="tanh"``), as in ``AffineCoupling``.
    An :class:`Autoregressive` with an :class:`~nflow_np.bijectors.transforms.AffineTransform`;
    other parameters as there.

    References: Papamakarios, Pavlakou and Murray, "Masked Autoregressive Flow
    for Density Estimation", NeurIPS 2017; Germain et al., "MADE", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, order=None, log_scale_clamp=3.0,
                 context=0, rng=None, dtype=np.float64, name=None, init="random", shift="base", conditioner="mlp",
                 clamp_shape="rational"):
        transform = AffineTransform(log_scale_clamp, name or type(self).__name__, shift=shift,
                                    clamp_shape=clamp_shape)
        super().__init__(features, transform, hidden, activation, order=order, context=context, rng=rng,
                         dtype=dtype, name=name, init=init, conditioner=conditioner)
        self.log_scale_clamp = transform.clamp


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
                 context=0, rng=None, dtype=np.float64, name=None, init="random", shift="base", conditioner="mlp",
                 clamp_shape="rational"):
        super().__init__(MaskedAutoregressive(features, hidden, activation, order=order,
                                              log_scale_clamp=log_scale_clamp, context=context, rng=rng,
                                              dtype=dtype, init=init, shift=shift, conditioner=conditioner,
                                              clamp_shape=clamp_shape),
                         name=name or "InverseAutoregressive")
        self.features = self.bijector.features


class SplineAutoregressive(Autoregressive):
    """Autoregressive rational-quadratic spline (autoregressive NSF) with a MADE conditioner.

    Data ``y`` and base ``x`` are related by ``x_i = g_i(y_i)``, a monotone
    spline whose ``3 bins - 1`` parameters come from ``y_<i`` (in ``order``)
    and the context; see :class:`~nflow_np.bijectors.SplineCoupling` for the
    spline. An :class:`Autoregressive` with a
    :class:`~nflow_np.bijectors.transforms.SplineTransform`.

    Parameters
    ----------
    features : int
    hidden, activation, order, context, rng, dtype, init, conditioner
        As in :class:`Autoregressive`.
    bins, bound, min_bin_width, min_bin_height, min_derivative, parameterization
        As in :class:`~nflow_np.bijectors.SplineCoupling`.

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
    Flows", NeurIPS 2019; Germain et al., "MADE", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, bins=8, bound=5.0, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, order=None, context=0, rng=None, dtype=np.float64,
                 name=None, init="random", conditioner="mlp", parameterization="bounded"):
        transform = SplineTransform(bins, bound, min_bin_width, min_bin_height, min_derivative,
                                    name or type(self).__name__, parameterization)
        super().__init__(features, transform, hidden, activation, order=order, context=context, rng=rng,
                         dtype=dtype, name=name, init=init, conditioner=conditioner)
        self.spline = transform.spline


class CircularSplineAutoregressive(Autoregressive):
    """Autoregressive circular rational-quadratic spline (NCSF on a torus) with a MADE conditioner.

    Data ``y`` and base ``x`` are angles related by ``x_i = g_i(y_i)``, a
    circular spline (:class:`~nflow_np.bijectors.transforms.CircularSplineTransform`)
    whose ``3 bins`` parameters come from ``y_<i`` (in ``order``) and the
    context: each ``g_i`` maps ``[-bound, bound]`` onto itself with the ends
    fixed and one shared end slope, so the layer is a diffeomorphism of the
    torus. With ``features=1`` the spline's parameters are the network's
    output biases: one learned circle map. Coordinates outside
    ``[-bound, bound]`` are refused with a ``ValueError``.

    Parameters
    ----------
    features : int
    hidden, activation, order, context, rng, dtype, init
        As in :class:`Autoregressive`.
    bins, bound, min_bin_width, min_bin_height, min_derivative
        As in :class:`~nflow_np.bijectors.CircularSplineCoupling` (``bound`` pi by default).

    References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan and
    Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020; Germain et al.,
    "MADE", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), activation="relu", *, bins=8, bound=np.pi, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, order=None, context=0, rng=None, dtype=np.float64,
                 name=None, init="random", conditioner="mlp"):
        transform = CircularSplineTransform(bins, bound, min_bin_width, min_bin_height, min_derivative,
                                            name or type(self).__name__)
        super().__init__(features, transform, hidden, activation, order=order, context=context, rng=rng,
                         dtype=dtype, name=name, init=init, conditioner=conditioner)
        self.spline = transform.spline
