"""Elementwise monotone transforms, the pluggable part of the coupling and autoregressive frames.

A transform maps each coordinate on its own, with ``P`` parameters per
coordinate that a conditioner computes. The frames
(:class:`~nflow_np.bijectors.Coupling`, :class:`~nflow_np.bijectors.Autoregressive`)
hand it values ``(..., m)`` and parameters ``(..., m, P)``; it returns the
transformed values, the per-coordinate log-dets and what its backward needs.
Its passes here are the NumPy reference; ``lower()`` names the compiled
version (:mod:`nflow_np.kernels.transforms`), which both frames run on the CPU
and the GPU.

Each transform's parameters are zero at initialization (the conditioners' last
layers start at zero), and zero parameters give the identity.
"""

import math

import numpy as np

from ..kernels.spline import (rqs_forward_backward_numpy, rqs_forward_numpy, rqs_inverse_backward_numpy,
                              rqs_inverse_numpy)
from ._roots import bracketed_newton
from .spline import SplineSettings

__all__ = ["Transform", "AffineTransform", "AdditiveTransform", "SplineTransform", "CircularSplineTransform",
           "SinhArcsinhTransform", "SigmoidalTransform"]


def _clamp_setting(value, where, name):
    if value is not None and not value > 0:
        raise ValueError(f"{where}: {name} must be positive or None; got {value}")
    return None if value is None else float(value)


CLAMP_SHAPES = ("tanh", "rational")


def _clamp_shape_setting(value, where):
    if not (isinstance(value, str) and value in CLAMP_SHAPES):
        raise ValueError(f"{where}: clamp_shape must be one of {CLAMP_SHAPES}; got {value!r}")
    return value


class Transform:
    """The interface of the frames' elementwise transforms.

    ``density(y, params) -> (x, log_det, ctx)`` maps data to base,
    ``sampling(x, params) -> (y, log_det, ctx)`` base to data, with per-coordinate
    log-dets; ``density_backward(ctx, grad_x, grad_log_det)`` and
    ``sampling_backward(ctx, grad_y, grad_log_det)`` return the input's gradient
    and the parameters' (``(..., m, P)``), from per-coordinate upstream gradients.
    """

    #: parameters per coordinate
    params_per_coordinate = 1
    #: a coupling's network emits each coordinate's parameters contiguously (else parameter-major)
    by_coordinate = False

    def lower(self):
        """The compiled engine's spec of this transform; without one, its frames run the NumPy passes."""
        from ..kernels.specs import Unsupported
        raise Unsupported(f"transform {type(self).__name__} has no compiled version")

    def config(self):
        """Constructor keywords that rebuild this transform (model files)."""
        return {}


class _SoftClamped(Transform):
    """A transform with a soft-clamped log-scale: ``s = clamp tanh(raw / clamp)`` (``clamp_shape`` "tanh"), or
    ``s = raw / (1 + |raw| / clamp)`` ("rational"); ``clamp`` None: ``s = raw``."""

    clamp = None
    clamp_shape = "tanh"

    def _log_scale(self, raw):
        """``(s, ds/draw)``; the slope is None without a clamp."""
        if self.clamp is None:
            return raw, None
        if self.clamp_shape == "rational":
            shrink = 1.0 / (1.0 + np.abs(raw) / self.clamp)
            return raw * shrink, shrink * shrink
        squashed = np.tanh(raw / self.clamp)
        return self.clamp * squashed, 1.0 - squashed * squashed

    @staticmethod
    def _raw_grad(grad_log_scale, slope):
        return grad_log_scale if slope is None else grad_log_scale * slope


class AffineTransform(_SoftClamped):
    """An affine map of each coordinate with log-scale ``s``, the soft-clamped second parameter (RealNVP, MAF).

    Parameters per coordinate: ``(shift, raw)``. ``log_scale_clamp`` (3 by
    default) bounds one layer's scaling to ``e^c`` either way; None disables it.
    ``clamp_shape`` picks how ``s`` approaches the bound: ``"rational"`` (the
    default), ``s = raw / (1 + |raw| / c)``, as zuko's affine layers, or
    ``"tanh"``, ``s = c tanh(raw / c)`` (the layers of files written before
    the option existed load with it). Both have slope 1 at 0; the rational
    one's slope, ``(1 - |s| / c)^2``, falls linearly from there (the tanh's
    stays flat to second order), which damps the log-scales' steps while they
    are small, and decays like ``raw^-2`` far out. Its curvature jumps at
    ``raw = 0``, so finite differences across 0 are O(h) accurate:
    :func:`~nflow_np.testing.check_gradients` agrees to about 1e-6 relative
    instead of 1e-10 (its tolerance is 1e-5). On the quality suite
    (``benchmarks/quality.py``, seeds 1-3, bound 3 both) it learned 0.011
    nats better for RealNVP and 0.013 for MAF on average over the data sets
    other than digits, and RealNVP 0.49 nats per image better on digits
    (better on 26 of 26 seeds).
    ``shift="base"`` (the default) applies the shift in the base space:
    sampling ``y = (x + shift) exp(s)``, density ``x = y exp(-s) - shift``, as
    zuko's and nflows' affine layers; ``shift="data"`` applies it in the data
    space: ``y = x exp(s) + shift``, ``x = (y - shift) exp(-s)`` (the layers of
    files written before the option existed load with it). The two describe
    the same maps; they learn differently: a base-space shift moves the output
    at unit rate whatever the scale, and on the quality suite RealNVP learned
    0.07-0.18 nats better with it on the multimodal sets and the same
    elsewhere.
    """

    params_per_coordinate = 2

    def __init__(self, log_scale_clamp=3.0, where="AffineTransform", shift="base", clamp_shape="rational"):
        self.clamp = _clamp_setting(log_scale_clamp, where, "log_scale_clamp")
        if not (isinstance(shift, str) and shift in ("base", "data")):
            raise ValueError(f"{where}: shift must be 'base' or 'data'; got {shift!r}")
        self.shift = shift
        self.clamp_shape = _clamp_shape_setting(clamp_shape, where)

    def density(self, y, params):
        s, slope = self._log_scale(params[..., 1])
        inv_scale = np.exp(-s)
        if self.shift == "base":
            x = y * inv_scale - params[..., 0]
            return x, -s, (y * inv_scale, inv_scale, slope)
        x = (y - params[..., 0]) * inv_scale
        return x, -s, (x, inv_scale, slope)

    def density_backward(self, ctx, grad_x, grad_log_det):
        # u = (y - shift_data) exp(-s) or y exp(-s): the scaled part of x, whose derivative in s is -u
        u, inv_scale, slope = ctx
        grad_y = grad_x * inv_scale
        grad_raw = self._raw_grad(-grad_x * u - grad_log_det, slope)
        grad_shift = -grad_x if self.shift == "base" else -grad_y
        return grad_y, np.stack([grad_shift, grad_raw], axis=-1)

    def sampling(self, x, params):
        s, slope = self._log_scale(params[..., 1])
        scale = np.exp(s)
        if self.shift == "base":
            y = (x + params[..., 0]) * scale
            return y, s, (y, scale, slope)
        return x * scale + params[..., 0], s, (x * scale, scale, slope)

    def sampling_backward(self, ctx, grad_y, grad_log_det):
        # v = the scaled part of y (all of it for a base shift), whose derivative in s is v
        v, scale, slope = ctx
        grad_raw = self._raw_grad(grad_y * v + grad_log_det, slope)
        grad_shift = grad_y * scale if self.shift == "base" else grad_y
        return grad_y * scale, np.stack([grad_shift, grad_raw], axis=-1)

    def lower(self):
        from ..kernels.specs import AffineSpec
        return AffineSpec(self.clamp or 0.0, self.shift == "base", self.clamp_shape == "rational")

    def config(self):
        return {"log_scale_clamp": self.clamp, "shift": self.shift, "clamp_shape": self.clamp_shape}


class AdditiveTransform(Transform):
    """``y = x + shift`` (NICE): one parameter per coordinate, log-det 0."""

    def density(self, y, params):
        return y - params[..., 0], np.zeros_like(y), None

    def density_backward(self, ctx, grad_x, grad_log_det):
        return grad_x, -grad_x[..., None]

    def sampling(self, x, params):
        return x + params[..., 0], np.zeros_like(x), None

    def sampling_backward(self, ctx, grad_y, grad_log_det):
        return grad_y, grad_y[..., None].copy()

    def lower(self):
        from ..kernels.specs import AdditiveSpec
        return AdditiveSpec()


class SplineTransform(Transform):
    """A monotone rational-quadratic spline per coordinate on ``[-bound, bound]``, the identity outside (NSF).

    Parameters per coordinate: ``bins`` unnormalized widths, ``bins`` heights
    and ``bins - 1`` interior-knot derivatives (``3 bins - 1``); see
    :class:`~nflow_np.bijectors.RationalQuadraticSpline`. The density
    direction evaluates the spline, sampling inverts it in closed form. A
    coupling's network emits each coordinate's parameters contiguously.
    ``parameterization``: ``"bounded"`` (the default: soft-clipped logits and
    log-slopes) or ``"softplus"``, the formulas there.
    """

    by_coordinate = True

    def __init__(self, bins=8, bound=5.0, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3,
                 where="SplineTransform", parameterization="bounded"):
        self.spline = SplineSettings(bins, bound, min_bin_width, min_bin_height, min_derivative, where,
                                     parameterization=parameterization)
        self.params_per_coordinate = self.spline.per_dim

    def _run(self, kernel, values, params):
        m = values.shape[-1]
        flat = np.ascontiguousarray(values.reshape(-1, m))
        flat_params = params.reshape(-1, m, self.params_per_coordinate)
        out, log_det = np.empty_like(flat), np.empty_like(flat)
        kernel(flat, *self.spline.split(flat_params), *self.spline.args, out, log_det,
               parameterization=self.spline.parameterization)
        return out.reshape(values.shape), log_det.reshape(values.shape), (flat, flat_params, values.shape)

    def _backward(self, kernel, ctx, grad_out, grad_log_det):
        flat, flat_params, shape = ctx
        m = flat.shape[1]
        grad_in = np.empty_like(flat)
        grad_params = np.empty_like(flat_params)
        kernel(flat, *self.spline.split(flat_params), *self.spline.args,
               np.ascontiguousarray(grad_out.reshape(-1, m)),
               np.ascontiguousarray(np.broadcast_to(grad_log_det, shape).reshape(-1, m)), grad_in,
               *self.spline.split(grad_params), parameterization=self.spline.parameterization)
        return grad_in.reshape(shape), grad_params.reshape(shape + (self.params_per_coordinate,))

    def density(self, y, params):
        return self._run(rqs_forward_numpy, y, params)

    def density_backward(self, ctx, grad_x, grad_log_det):
        return self._backward(rqs_forward_backward_numpy, ctx, grad_x, grad_log_det)

    def sampling(self, x, params):
        return self._run(rqs_inverse_numpy, x, params)

    def sampling_backward(self, ctx, grad_y, grad_log_det):
        return self._backward(rqs_inverse_backward_numpy, ctx, grad_y, grad_log_det)

    def lower(self):
        return self.spline.lower()

    def config(self):
        sp = self.spline
        return {"bins": sp.bins, "bound": sp.bound, "min_bin_width": sp.min_bin_width,
                "min_bin_height": sp.min_bin_height, "min_derivative": sp.min_derivative,
                "parameterization": sp.parameterization}


class CircularSplineTransform(SplineTransform):
    """A rational-quadratic spline per coordinate that maps the circle ``[-bound, bound)`` onto itself (NCSF).

    The spline of :class:`SplineTransform` with both ends among its knots and
    one slope shared by them: ``bins`` unnormalized widths, ``bins`` heights
    and ``bins`` derivatives per coordinate (``3 bins``), the first ``bins - 1``
    the interior-knot slopes ``d_1 .. d_{K-1}``, the last the end slope
    ``d_0 = d_K = min_derivative + softplus(ud_{K-1} + c0)``. The map fixes
    ``-B`` and ``B`` and its slope agrees there, so read on the circle
    (``-B ~ B``) it is a smooth, orientation-preserving diffeomorphism; zero
    parameters give the identity. On bin ``k`` the map, its log-slope and the
    closed-form inverse are those of
    :class:`~nflow_np.bijectors.RationalQuadraticSpline`. There are no tails:
    a value outside ``[-bound, bound]`` (default ``[-pi, pi]``) is refused
    with a ``ValueError`` naming it and the interval (the compiled passes give
    NaN there).

    References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan
    and Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020; Durkan et
    al., "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(self, bins=8, bound=math.pi, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3,
                 where="CircularSplineTransform"):
        self.where = where
        self.spline = SplineSettings(bins, bound, min_bin_width, min_bin_height, min_derivative, where,
                                     circular=True)
        self.params_per_coordinate = self.spline.per_dim

    def _check_interval(self, values, argname):
        bound = values.dtype.type(self.spline.bound)
        outside = ~((values >= -bound) & (values <= bound))
        if np.any(outside):
            idx = np.unravel_index(int(np.argmax(outside)), outside.shape)
            raise ValueError(f"{self.where}: {argname} must lie in the circular spline's interval [-bound, bound] = "
                             f"[{-float(bound):.9g}, {float(bound):.9g}] (angles: wrap them first, e.g. "
                             f"(a + pi) % (2 pi) - pi); got {float(values[idx]):.9g} at index {tuple(int(i) for i in idx)} "
                             f"of the transformed coordinates")

    def density(self, y, params):
        self._check_interval(y, "y")
        return super().density(y, params)

    def sampling(self, x, params):
        self._check_interval(x, "x")
        return super().sampling(x, params)


def _log_cosh(w):
    a = np.abs(w)
    return a + np.log1p(np.exp(-2.0 * a)) - math.log(2.0)


class SinhArcsinhTransform(_SoftClamped):
    """``y = sinh((asinh(x) + a) tau)``, ``tau = exp(s)``: skewness ``a`` and tail weight ``tau`` per coordinate.

    Parameters per coordinate: ``(a, raw)``, with ``s = c tanh(raw / c)``,
    ``c = log_tail_clamp`` (2 by default, so ``tau`` lies in ``(e^-2, e^2)``;
    None: ``s = raw``). Tail weights above 1 make the tails heavier, below 1
    lighter; zero parameters give the identity. Both directions are closed
    form: the density direction is ``x = sinh(asinh(y) / tau - a)``.

    References: Jones and Pewsey, "Sinh-arcsinh distributions", Biometrika 2009.
    """

    params_per_coordinate = 2

    def __init__(self, log_tail_clamp=2.0, where="SinhArcsinhTransform"):
        self.clamp = _clamp_setting(log_tail_clamp, where, "log_tail_clamp")

    def density(self, y, params):
        s, slope = self._log_scale(params[..., 1])
        u = np.arcsinh(y)
        w = u * np.exp(-s) - params[..., 0]
        return np.sinh(w), _log_cosh(w) - s - np.log(np.hypot(1.0, y)), (y, u, w, s, slope)

    def density_backward(self, ctx, grad_x, grad_log_det):
        y, u, w, s, slope = ctx
        inv_tau = np.exp(-s)
        grad_w = grad_x * np.cosh(w) + grad_log_det * np.tanh(w)
        grad_raw = self._raw_grad(-grad_w * u * inv_tau - grad_log_det, slope)
        h = np.hypot(1.0, y)
        return grad_w * inv_tau / h - grad_log_det * (y / h) / h, np.stack([-grad_w, grad_raw], axis=-1)

    def sampling(self, x, params):
        s, slope = self._log_scale(params[..., 1])
        q = (np.arcsinh(x) + params[..., 0]) * np.exp(s)
        return np.sinh(q), _log_cosh(q) + s - np.log(np.hypot(1.0, x)), (x, q, s, slope)

    def sampling_backward(self, ctx, grad_y, grad_log_det):
        x, q, s, slope = ctx
        tau = np.exp(s)
        grad_q = grad_y * np.cosh(q) + grad_log_det * np.tanh(q)
        grad_raw = self._raw_grad(grad_q * q + grad_log_det, slope)
        h = np.hypot(1.0, x)
        return grad_q * tau / h - grad_log_det * (x / h) / h, np.stack([grad_q * tau, grad_raw], axis=-1)

    def lower(self):
        from ..kernels.specs import SinhArcsinhSpec
        return SinhArcsinhSpec(self.clamp or 0.0)

    def config(self):
        return {"log_tail_clamp": self.clamp}


def _logsumexp(a):
    top = a.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=-1, keepdims=True)))[..., 0]


class SigmoidalTransform(Transform):
    """NAF's deep sigmoidal transform: a monotone mixture of ``units`` sigmoids per coordinate.

    With ``K = units`` and per-coordinate parameters ``(raw_a, b, raw_w)``, ``K``
    each (``3 K`` in all), the density direction (data ``y`` to base ``x``) is::

        x = logit(sum_j w_j sigmoid(a_j y + b_j)),   a_j = min_slope + softplus(raw_a_j + c0),   w = softmax(raw_w)

    with ``c0 = log(expm1(1 - min_slope))``, so zero parameters give the identity.
    ``log m`` and ``log(1 - m)`` of the mixture ``m`` are computed as log-sum-exps of
    log-sigmoids, never through ``m``: the map and its log-derivative stay finite and
    accurate in float32 and float64 far into the tails, where ``m`` rounds to 0 or 1,
    so the mixture needs no clip. Far out, ``x`` grows like ``min_j a_j |y|``: the map
    is a bijection of the real line, and data of magnitude 5 or 50 need no rescaling.

    The sampling direction has no closed form: a bracketed Newton iteration with a
    bisection fallback solves ``x = f(y)`` for ``y`` to a few ulps, the bracket
    ``[min_j (x - b_j) / a_j, max_j (x - b_j) / a_j]`` coming from
    ``min_j u_j <= f <= max_j u_j``. Its VJP follows from the implicit function
    theorem at the solution: ``dy/dx = 1 / f'(y)`` and ``dy/dtheta = -(df/dtheta) / f'(y)``.

    With ``init="identity"`` conditioners (a zero last layer) all units start equal
    and stay so (their gradients agree); the flows use the default random start.

    Parameters
    ----------
    units : int, default 8
        Sigmoids per coordinate (the hidden layer of the paper's DSF).
    min_slope : float, default 1e-3
        The smallest slope ``a_j``; it bounds the sampling bracket.

    References: Huang, Krueger, Lacoste and Courville, "Neural Autoregressive Flows", ICML 2018.
    """

    by_coordinate = True

    def __init__(self, units=8, min_slope=1e-3, where="SigmoidalTransform"):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{where}: units must be a positive int; got {units!r}")
        if not (isinstance(min_slope, (int, float, np.floating)) and 0.0 < min_slope < 1.0):
            raise ValueError(f"{where}: min_slope must be a float in (0, 1); got {min_slope!r}")
        self.units = int(units)
        self.min_slope = float(min_slope)
        self.params_per_coordinate = 3 * self.units
        self._shift = math.log(math.expm1(1.0 - self.min_slope))

    def _unpack(self, params):
        """``(a, b, log w)``, each ``(..., m, K)``."""
        k = self.units
        z = params[..., :k] + self._shift
        a = self.min_slope + np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
        raw_w = params[..., 2 * k:]
        return a, params[..., k:2 * k], raw_w - _logsumexp(raw_w)[..., None]

    @staticmethod
    def _terms(v, a, b, lw):
        """``(y, log f', log sigmoid(u), log sigmoid(-u), log m, log(1 - m), M)`` at ``v``."""
        u = a * v[..., None] + b
        tail = np.log1p(np.exp(-np.abs(u)))
        ls1 = np.where(u >= 0, -tail, u - tail)
        ls0 = np.where(u >= 0, -u - tail, -tail)
        log_m, log_1m = _logsumexp(lw + ls1), _logsumexp(lw + ls0)
        big_m = _logsumexp(lw + np.log(a) + ls1 + ls0)
        return log_m - log_1m, big_m - log_m - log_1m, ls1, ls0, log_m, log_1m, big_m

    def _vjp(self, v, a, b, lw, g, gld):
        """Gradients of ``g f(v) + gld log f'(v)`` in ``v`` and in the raw parameters ``(..., m, 3 K)``."""
        _, _, ls1, ls0, log_m, log_1m, big_m = self._terms(v, a, b, lw)
        s, sc = np.exp(ls1), np.exp(ls0)
        r1 = np.exp(lw + ls1 - log_m[..., None])           # w_j s_j / m
        r0 = np.exp(lw + ls0 - log_1m[..., None])          # w_j (1 - s_j) / (1 - m)
        rho_a = np.exp(lw + ls1 + ls0 - big_m[..., None])  # unit j's share of f', over a_j
        rho = rho_a * a
        g, gld = g[..., None], gld[..., None]
        g_u = g * (r1 * sc + r0 * s) + gld * (rho * (sc - s) - r1 * sc + r0 * s)
        g_raw_a = (g_u * v[..., None] + gld * rho_a) * -np.expm1(-(a - self.min_slope))
        g_raw_w = g * (r1 - r0) + gld * (rho - r1 - r0 + np.exp(lw))
        return (g_u * a).sum(axis=-1), np.concatenate([g_raw_a, g_u, g_raw_w], axis=-1)

    def density(self, y, params):
        a, b, lw = self._unpack(params)
        x, log_det = self._terms(y, a, b, lw)[:2]
        return x, log_det, (y, a, b, lw)

    def density_backward(self, ctx, grad_x, grad_log_det):
        y, a, b, lw = ctx
        return self._vjp(y, a, b, lw, grad_x, np.broadcast_to(grad_log_det, y.shape))

    def _solve(self, v, a, b, lw):
        """The root of ``f(y) = v``, elementwise (:func:`~nflow_np.bijectors._roots.bracketed_newton`)."""
        c = (v[..., None] - b) / a

        def fn(y, active):
            f, log_slope = self._terms(y, a, b, lw)[:2]
            return f, np.exp(log_slope)

        return bracketed_newton(fn, v, c.min(axis=-1), c.max(axis=-1), (np.exp(lw) * c).sum(axis=-1))

    def sampling(self, x, params):
        a, b, lw = self._unpack(params)
        y = self._solve(x, a, b, lw)
        log_det = self._terms(y, a, b, lw)[1]
        return y, -log_det, (y, a, b, lw, log_det)

    def sampling_backward(self, ctx, grad_y, grad_log_det):
        # y = f^-1(x): dy/dx = 1 / f'(y), dy/dtheta = -(df/dtheta) / f'(y); the log-det is -log f'(y)
        y, a, b, lw, log_det = ctx
        grad_log_det = np.broadcast_to(grad_log_det, y.shape)
        dlog_det_dy, _ = self._vjp(y, a, b, lw, np.zeros_like(y), np.ones_like(y))
        inv_slope = np.exp(-log_det)
        grad_total = (grad_y - grad_log_det * dlog_det_dy) * inv_slope
        _, grad_params = self._vjp(y, a, b, lw, -grad_total, -grad_log_det)
        return grad_total, grad_params

    def lower(self):
        from ..kernels.specs import SigmoidalSpec
        return SigmoidalSpec(self.units, self.min_slope)

    def config(self):
        return {"units": self.units, "min_slope": self.min_slope}


TRANSFORMS = {"affine": AffineTransform, "additive": AdditiveTransform, "spline": SplineTransform,
              "sinh_arcsinh": SinhArcsinhTransform, "circular_spline": CircularSplineTransform,
              "sigmoidal": SigmoidalTransform}
