"""The coupling frame (:class:`Coupling`) and its named forms: NICE's additive, RealNVP's affine, NSF's spline and
NCSF's circular spline coupling.

A boolean ``mask`` splits each vector: the masked part ``x_a`` passes through
unchanged and conditions an MLP, which computes the parameters of an
elementwise transform of the other part ``x_b``.
"""

import numpy as np

from .._validation import check_event_shape
from ..nn.mlp import MLP, MaskedMLP, _check_hidden
from .base import CONTEXT_GRAD, PassBijector
from .transforms import AdditiveTransform, AffineTransform, CircularSplineTransform, SplineTransform, Transform


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


FRAME_INITS = ("random", "identity")


def network_init(init, where):
    """The conditioner network's start for a frame's ``init``, as keywords of :class:`~nflow_np.nn.MLP`.

    ``"random"`` (the default): every layer, the last included, drawn as PyTorch's ``nn.Linear`` (uniform
    in +-1/sqrt(fan_in)), so the layer starts near, not at, the identity; chosen on the quality suite
    (``benchmarks/quality.py``), where it learns 0.05-0.3 nats better in a fixed budget. ``"identity"``:
    He/Glorot-normal hidden layers and a zero last layer, so the layer starts exactly as the identity
    (variational inference that must start at the base, or a flow grown layer by layer).
    """
    if not (isinstance(init, str) and init in FRAME_INITS):
        raise ValueError(f"{where}: init must be one of {FRAME_INITS}; got {init!r}")
    return {"init": "uniform", "zero_last": False} if init == "random" else {"init": "normal", "zero_last": True}


CONDITIONERS = ("mlp", "resnet")


def check_conditioner(conditioner, hidden, where):
    """Validate a frame's ``conditioner=`` and ``hidden=``; return ``(conditioner, hidden)``.

    ``"mlp"``: ``hidden`` lists the hidden widths. ``"resnet"``: ``hidden`` is
    ``(width,) * blocks``, one entry per residual block, all equal (an int
    means one block), e.g. ``(64, 64)`` for two blocks of width 64.
    """
    if not (isinstance(conditioner, str) and conditioner in CONDITIONERS):
        raise ValueError(f"{where}: conditioner must be one of {CONDITIONERS}; got {conditioner!r}")
    hidden = _check_hidden(hidden, where)
    if conditioner == "resnet" and (not hidden or len(set(hidden)) != 1):
        raise ValueError(f"{where}: with conditioner='resnet', hidden is (width,) * blocks, one equal width per "
                         f"residual block, e.g. (64, 64); got {hidden!r}")
    return conditioner, hidden


def dense_conditioner(conditioner, in_features, out_features, hidden, activation, **kwargs):
    """The coupling frame's network: :class:`~nflow_np.nn.MLP` or :class:`~nflow_np.nn.ResidualMLP`."""
    if conditioner == "resnet":
        from ..nn.resnet import ResidualMLP
        return ResidualMLP(in_features, out_features, hidden[0], len(hidden), activation, **kwargs)
    return MLP(in_features, out_features, hidden, activation, **kwargs)


def masked_conditioner(conditioner, features, hidden, out_per_feature, activation, **kwargs):
    """The autoregressive frame's network: :class:`~nflow_np.nn.MaskedMLP` or :class:`~nflow_np.nn.ResidualMADE`."""
    if conditioner == "resnet":
        from ..nn.resnet import ResidualMADE
        return ResidualMADE(features, hidden[0], len(hidden), out_per_feature, activation, **kwargs)
    return MaskedMLP(features, hidden, out_per_feature=out_per_feature, activation=activation, **kwargs)


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


class Coupling(PassBijector):
    """A coupling layer: a mask, a conditioner and an elementwise transform.

    ``y_a = x_a`` and ``y_b = f(x_b; theta(x_a, context))``: the coordinates
    where ``mask`` is True pass through and condition an MLP, which computes the
    parameters of ``transform`` (:mod:`nflow_np.bijectors.transforms`) for every
    other coordinate. Both directions take one network call, and the Jacobian is
    triangular, so the log-det is the sum of the transform's. Any transform with
    a lowering runs compiled on the Numba and CUDA backends.

    Parameters
    ----------
    mask : array of bool, shape (d,)
        True marks the conditioning coordinates (passed through), False the
        transformed ones. Both must be present, so d >= 2.
    transform : Transform
        ``AffineTransform()`` (RealNVP), ``AdditiveTransform()`` (NICE),
        ``SplineTransform()`` (NSF), ``SinhArcsinhTransform()``, or your own.
    hidden : tuple of int
        Hidden widths of the conditioner MLP; with ``conditioner="resnet"``,
        ``(width,) * blocks`` (one entry per residual block, all equal).
    activation : {"relu", "tanh", "elu", "silu"}
    context : int, default 0
        Width of a conditioning input: the network then sees ``(x_a, context)``,
        and every pass takes ``context=`` (one row per point, or one row for all).
    conditioner : {"mlp", "resnet"}, default "mlp"
        The network: a plain :class:`~nflow_np.nn.MLP`, or a
        :class:`~nflow_np.nn.ResidualMLP` (pre-activation residual blocks, as
        Durkan et al.'s NSF); both are compiled (``backend="numba"``/``"cuda"``).
    rng : Generator or int, optional
    dtype : float64 (default) or float32
    init : {"random", "identity"}, default "random"
        The conditioner's start (:func:`~nflow_np.bijectors.coupling.network_init`):
        every layer as PyTorch's ``nn.Linear`` (near the identity), or exactly
        the identity (a zero last layer).

    References: Dinh, Sohl-Dickstein and Bengio, "Density estimation using
    Real NVP", ICLR 2017; Durkan et al., "Neural Spline Flows", NeurIPS 2019.
    """

    event_ndims = 1

    def __init__(self, mask, transform, hidden=(64, 64), activation="relu", *, context=0, rng=None,
                 dtype=np.float64, name=None, init="random", conditioner="mlp"):
        super().__init__(dtype=np.dtype(dtype), name=name)
        if not isinstance(transform, Transform):
            raise TypeError(f"{self.name}: transform must be a nflow_np.bijectors.transforms.Transform; "
                            f"got {transform!r}")
        self.transform = transform
        self.mask = _split_mask(mask, self.name)
        self.features = self.mask.size
        self.context_size = check_context_size(context, self.name)
        self._a = np.flatnonzero(self.mask)
        self._b = np.flatnonzero(~self.mask)
        self.conditioner, hidden = check_conditioner(conditioner, hidden, self.name)
        self.net = dense_conditioner(self.conditioner, self._a.size, transform.params_per_coordinate * self._b.size,
                                     hidden, activation, rng=rng, dtype=self.dtype,
                                     context_features=self.context_size, **network_init(init, self.name))
        self.init = init

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

    def _params(self, out):
        """The network output as ``(..., nb, P)`` transform parameters (a view)."""
        nb, per = self._b.size, self.transform.params_per_coordinate
        if self.transform.by_coordinate:
            return out.reshape(out.shape[:-1] + (nb, per))
        return np.swapaxes(out.reshape(out.shape[:-1] + (per, nb)), -1, -2)

    def _net_grad(self, grad_params):
        if self.transform.by_coordinate:
            return grad_params.reshape(grad_params.shape[:-2] + (-1,))
        return np.swapaxes(grad_params, -1, -2).reshape(grad_params.shape[:-2] + (-1,))

    def _pass(self, inp, context, method, step):
        self._check(inp, method)
        cond = inp[..., self._a]
        out, cache = self.net.forward_with_cache(cond, context)
        values, log_det, ctx = step(inp[..., self._b], self._params(out))
        return self._assemble(cond, values), log_det.sum(axis=-1), (ctx, cache)

    def _backward(self, ctx, grad_out, grad_log_det, step):
        transform_ctx, cache = ctx
        grad_b, grad_params = step(transform_ctx, grad_out[..., self._b], grad_log_det[..., None])
        grad_cond, grads = net_backward(self.net, cache, self._net_grad(grad_params))
        grads = {k if k == CONTEXT_GRAD else f"net.{k}": v for k, v in grads.items()}
        return self._assemble(grad_out[..., self._a] + grad_cond, grad_b), grads

    def _forward_pass(self, x, context=None):
        return self._pass(x, context, "forward", self.transform.sampling)

    def _inverse_pass(self, y, context=None):
        return self._pass(y, context, "inverse", self.transform.density)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return self._backward(ctx, grad_y, grad_log_det, self.transform.sampling_backward)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return self._backward(ctx, grad_x, grad_log_det, self.transform.density_backward)

    def lower(self, d):
        from ..kernels.specs import CouplingSpec
        return CouplingSpec(conditioned=self._a, transformed=self._b, net=self.net.lower(),
                            transform=self.transform.lower(), by_coordinate=self.transform.by_coordinate)


class AdditiveCoupling(Coupling):
    """NICE's additive coupling: ``y_b = x_b + t(x_a)``, ``y_a = x_a``; log-det 0.

    A :class:`Coupling` with an :class:`~nflow_np.bijectors.transforms.AdditiveTransform`;
    parameters as there.

    References: Dinh, Krueger and Bengio, "NICE: Non-linear Independent
    Components Estimation", ICLR 2015 workshop.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, context=0, rng=None, dtype=np.float64,
                 name=None, init="random", conditioner="mlp"):
        super().__init__(mask, AdditiveTransform(), hidden, activation, context=context, rng=rng, dtype=dtype,
                         name=name, init=init, conditioner=conditioner)


class AffineCoupling(Coupling):
    """RealNVP's affine coupling: ``y_b = x_b * exp(s(x_a)) + t(x_a)``, ``y_a = x_a``; log-det ``sum(s)``.

    The log-scale is soft-clamped, ``s = raw / (1 + |raw| / c)`` with
    ``c = log_scale_clamp`` (3 by default): one layer scales by at most
    ``e^c`` either way, so a bad step cannot blow the scales up to inf/NaN,
    while small log-scales pass through almost unchanged. ``None`` disables it;
    ``clamp_shape="tanh"`` clamps with ``s = c tanh(raw / c)`` instead (see
    :class:`~nflow_np.bijectors.transforms.AffineTransform`).
    A :class:`Coupling` with an :class:`~nflow_np.bijectors.transforms.AffineTransform`;
    other parameters as there, ``context`` included.

    References: Dinh, Sohl-Dickstein and Bengio, "Density estimation using
    Real NVP", ICLR 2017.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, log_scale_clamp=3.0, context=0, rng=None,
                 dtype=np.float64, name=None, init="random", shift="base", conditioner="mlp", clamp_shape="rational"):
        transform = AffineTransform(log_scale_clamp, name or type(self).__name__, shift=shift,
                                    clamp_shape=clamp_shape)
        super().__init__(mask, transform, hidden, activation, context=context, rng=rng, dtype=dtype, name=name,
                         init=init, conditioner=conditioner)
        self.log_scale_clamp = transform.clamp


class SplineCoupling(Coupling):
    """Coupling with a monotone rational-quadratic spline per transformed coordinate (NSF).

    The network maps ``(x_a, context)`` to ``3 bins - 1`` numbers per
    transformed coordinate: unnormalized bin widths, bin heights and interior
    knot derivatives of a spline ``g`` on ``[-bound, bound]`` (the identity
    outside; see :class:`~nflow_np.bijectors.RationalQuadraticSpline` for the
    parameterization). The density direction evaluates the spline,
    ``x_b = g(y_b)`` with log-det ``sum(log g'(y_b))``; sampling inverts it,
    ``y_b = g^{-1}(x_b)``, by the closed-form root of a quadratic. The last
    network layer starts at zero, which makes every spline the identity.
    A :class:`Coupling` with a :class:`~nflow_np.bijectors.transforms.SplineTransform`.

    Parameters
    ----------
    mask, hidden, activation, context, rng, dtype, init, conditioner
        As in :class:`Coupling`.
    bins : int, default 8
    bound : float, default 5.0
    min_bin_width, min_bin_height, min_derivative : float, default 1e-3
    parameterization : {"bounded", "softplus"}, default "bounded"
        How the network's outputs map to bins and slopes: softmax and exp of
        soft-clipped outputs, or softmax widths with a floor and softplus slopes
        (formulas in :class:`~nflow_np.bijectors.RationalQuadraticSpline`).

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
    Flows", NeurIPS 2019.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, bins=8, bound=5.0, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, context=0, rng=None, dtype=np.float64, name=None,
                 init="random", conditioner="mlp", parameterization="bounded"):
        transform = SplineTransform(bins, bound, min_bin_width, min_bin_height, min_derivative,
                                    name or type(self).__name__, parameterization)
        super().__init__(mask, transform, hidden, activation, context=context, rng=rng, dtype=dtype, name=name,
                         init=init, conditioner=conditioner)
        self.spline = transform.spline


class CircularSplineCoupling(Coupling):
    """Coupling with a circular rational-quadratic spline per transformed coordinate (NCSF, angles).

    As :class:`SplineCoupling`, with a
    :class:`~nflow_np.bijectors.transforms.CircularSplineTransform`: the
    network maps ``(x_a, context)`` to ``3 bins`` numbers per transformed
    coordinate (widths, heights, the ``bins - 1`` interior slopes and the slope
    shared by both ends), and each spline maps ``[-bound, bound]`` onto itself
    with ``-bound`` and ``bound`` fixed, a diffeomorphism of the circle. Every
    coordinate must lie in ``[-bound, bound]`` (default ``[-pi, pi]``); a
    transformed one outside it is refused with a ``ValueError``. The
    conditioner reads the passed-through angles as they are.

    Parameters
    ----------
    mask, hidden, activation, context, rng, dtype, init
        As in :class:`Coupling`.
    bins : int, default 8
    bound : float, default pi
    min_bin_width, min_bin_height, min_derivative : float, default 1e-3

    References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan and
    Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020.
    """

    def __init__(self, mask, hidden=(64, 64), activation="relu", *, bins=8, bound=np.pi, min_bin_width=1e-3,
                 min_bin_height=1e-3, min_derivative=1e-3, context=0, rng=None, dtype=np.float64, name=None,
                 init="random", conditioner="mlp"):
        transform = CircularSplineTransform(bins, bound, min_bin_width, min_bin_height, min_derivative,
                                            name or type(self).__name__)
        super().__init__(mask, transform, hidden, activation, context=context, rng=rng, dtype=dtype, name=name,
                         init=init, conditioner=conditioner)
        self.spline = transform.spline
