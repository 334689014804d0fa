"""The rational-quadratic spline (Durkan et al. 2019) as a trainable elementwise bijector."""

import numbers

import numpy as np

from .._validation import as_float_array, check_finite, resolve_dtype, sum_to_shape
from ..kernels.spline import (
    PARAMETERIZATIONS,
    rqs_forward_backward_numpy,
    rqs_forward_numpy,
    rqs_inverse_backward_numpy,
    rqs_inverse_numpy,
)
from .base import Bijector

_KEYS = ("unnormalized_widths", "unnormalized_heights", "unnormalized_derivatives")

# the interval [-bound, bound] must have a finite width in float32, the narrowest dtype a spline computes in:
# past it the knots' spacing overflows and every log-density comes out NaN
_MAX_BOUND = float(np.finfo(np.float32).max) / 4


def _positive_real(value, where, name):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite positive number; got {value!r}")
    return float(value)


def spline_constants(bins, bound, min_bin_width, min_bin_height, min_derivative, where):
    """``(bound, min_bin_width, min_bin_height, min_derivative)`` as floats, checked for a spline of ``bins`` bins.

    The minima must be positive (a bin of zero width or height would divide by zero) and leave room for
    ``bins`` bins; the slope minimum must lie below 1, the slope at the ends.
    """
    bound = _positive_real(bound, where, "bound")
    if not bound > 0:
        raise ValueError(f"{where}: bound must be a finite positive number; got {bound!r}")
    if bound > _MAX_BOUND:
        raise ValueError(f"{where}: bound must be at most {_MAX_BOUND:.3g}, so that the interval's width is "
                         f"finite in float32; got {bound!r}")
    minima = []
    for key, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        value = _positive_real(value, where, key)
        if not 0 < value * bins < 1:
            raise ValueError(f"{where}: {key} must lie in (0, 1/K) = (0, {1 / bins:g}) for K = {bins} bins; "
                             f"got {value!r}")
        minima.append(value)
    min_derivative = _positive_real(min_derivative, where, "min_derivative")
    if not 0 < min_derivative < 1:
        raise ValueError(f"{where}: min_derivative must lie in (0, 1); got {min_derivative!r}")
    return bound, minima[0], minima[1], min_derivative


def check_parameterization(value, where):
    """``value`` if it names a spline parameterization (``"softplus"``, ``"bounded"``), else a ValueError."""
    if not (isinstance(value, str) and value in PARAMETERIZATIONS):
        raise ValueError(f"{where}: parameterization must be one of {PARAMETERIZATIONS}; got {value!r}")
    return value


class SplineSettings:
    """The shape of a rational-quadratic spline as a layer builds it: bins, bound, the minima and the
    parameterization (``"softplus"`` or ``"bounded"``, see :class:`RationalQuadraticSpline`).

    ``args`` is what the spline kernels take after the parameters (and ``parameterization`` their keyword); ``split``
    views a conditioner's output, ``(n, m, 3 bins - 1)``, as the unnormalized
    widths, heights and interior-knot derivatives. ``circular=True``: ``3 bins``
    outputs, the last derivative the slope shared by both ends (a circular spline).
    """

    def __init__(self, bins, bound, min_bin_width, min_bin_height, min_derivative, where, circular=False,
                 parameterization="softplus"):
        if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ValueError(f"{where}: bins must be an int >= 2; got {bins!r}")
        self.bins = int(bins)
        self.args = spline_constants(self.bins, bound, min_bin_width, min_bin_height, min_derivative, where)
        self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative = self.args
        self.circular = bool(circular)
        self.parameterization = check_parameterization(parameterization, where)
        self.per_dim = 3 * self.bins - (0 if self.circular else 1)

    def lower(self):
        """The compiled engine's spec of this spline (:class:`nflow_np.kernels.specs.SplineSpec`, or
        :class:`~nflow_np.kernels.specs.CircularSplineSpec`)."""
        from ..kernels.specs import CircularSplineSpec, SplineSpec
        return (CircularSplineSpec if self.circular else SplineSpec)(self.bins, *self.args,
                                                                      parameterization=self.parameterization)

    def split(self, out):
        k = self.bins
        return out[..., :k], out[..., k:2 * k], out[..., 2 * k:]


class RationalQuadraticSpline(Bijector):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside.

    Each element's spline has ``K`` bins, set by unnormalized parameters
    ``uw``, ``uh`` (``K`` each) and ``ud`` (``K - 1``)::

        widths   W = min_bin_width  + (1 - min_bin_width  K) softmax(uw)
        heights  H = min_bin_height + (1 - min_bin_height K) softmax(uh)
        knots    x_0 = -B, x_k = -B + 2B (W_0 + ... + W_{k-1}), x_K = B   (y_k from H likewise)
        slopes   d_0 = d_K = 1, d_k = min_derivative + softplus(ud_{k-1} + c0),
                 c0 = log(expm1(1 - min_derivative))

    (``parameterization="softplus"``, the default), or, with
    ``parameterization="bounded"``, softmaxes and exponentials of soft-clipped
    parameters (the minimum width and height then unused)::

        softclip(u, c) = u / (1 + |u| / c)        (odd, smooth, in (-c, c), slope 1 at 0)
        widths   W = softmax(softclip(uw, c_w)),  heights H = softmax(softclip(uh, c_w))
        slopes   d_0 = d_K = 1, d_k = exp(softclip(ud_{k-1}, c_d)),
                 c_d = -log(min_derivative), c_w = c_d / 2

    whose interior slopes lie in ``(min_derivative, 1 / min_derivative)`` and
    bins are never narrower than ``min_derivative / (min_derivative + K - 1)``
    of ``2B`` (with an NSF coupling flow on 64-D digits it learned about 0.75
    nats per image better than the softplus one). Either way all-zero
    parameters give the identity, and the slope is continuous at
    ``+-B``. On bin ``k`` (``x_k <= x < x_{k+1}``; ``x = B`` in the last), with
    ``w, h`` its width and height, ``s = h / w``, ``xi = (x - x_k) / w``::

        y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi))
        log dy/dx = log(s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2))
                    - 2 log(s + (d_{k+1} + d_k - 2 s) xi (1 - xi))

    The inverse solves that quadratic in ``xi`` with the root
    ``2c / (-b - sqrt(b^2 - 4ac))``, which does not cancel. Both directions are
    evaluated from the bin's nearer knot (the formula is symmetric under
    swapping the ends), so knots, ``-B`` and ``B`` map exactly onto their
    images. The map increases; ``forward`` is the spline, ``inverse`` its
    inverse. Parameters get gradients in both directions, summed over the
    batch axes they were broadcast along.

    Parameters
    ----------
    unnormalized_widths, unnormalized_heights : array_like
        Shape ``batch + (K,)``, ``K >= 1`` bins (``K = 1`` is the identity).
    unnormalized_derivatives : array_like
        Shape ``batch + (K - 1,)``: the slopes at the interior knots. The three
        ``batch`` shapes broadcast together and against the input's shape:
        ``()`` for one spline for all elements, ``(d,)`` for one per coordinate.
    bound : float
        ``B > 0``: the spline acts on ``[-B, B]``.
    min_bin_width, min_bin_height : float
        In ``(0, 1 / K)``: no bin is narrower (or lower) than this fraction of
        ``2B``, which bounds the slopes the spline can reach.
    min_derivative : float
        In ``(0, 1)``: the smallest slope at an interior knot (``"bounded"``:
        it sets the clip levels as well).
    parameterization : {"softplus", "bounded"}, default "softplus"
        How the parameters map to bins and slopes (the formulas above).
    dtype : dtype, optional
        float64 unless the parameters are float32 arrays or ``dtype`` says otherwise.
    name : str, optional

    See Also
    --------
    RationalQuadraticSpline.identity : all-zero parameters.

    Notes
    -----
    The passes run the NumPy reference kernels of :mod:`nflow_np.kernels.spline`;
    their analytic VJPs chain through the bin-local quantities, the cumulative
    sums, the softmax and the softplus (or the soft clips and the exponential).

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
    Flows", NeurIPS 2019 (appendix A for the inverse); Gregory and Delbourgo,
    "Piecewise rational quadratic interpolation to monotonic data", IMA J.
    Numer. Anal. 2, 1982.
    """

    event_ndims = 0

    def __init__(self, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, *, bound=5.0,
                 min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3, parameterization="softplus",
                 dtype=None, name=None):
        given = (unnormalized_widths, unnormalized_heights, unnormalized_derivatives)
        super().__init__(dtype=resolve_dtype(dtype, *given, where=type(self).__name__), name=name)
        where = self.name
        uw, uh, ud = (np.array(as_float_array(v, self.dtype, f"{where}.__init__", key), dtype=self.dtype, copy=True)
                      for v, key in zip(given, _KEYS))
        if uw.ndim == 0 or uh.ndim == 0 or ud.ndim == 0:
            raise ValueError(f"{where}: the parameters need a trailing bins axis (batch + (K,), batch + (K,), "
                             f"batch + (K - 1,)); got shapes {uw.shape}, {uh.shape}, {ud.shape}")
        bins = uw.shape[-1]
        if bins < 1:
            raise ValueError(f"{where}: unnormalized_widths must have at least one bin on its last axis; "
                             f"got shape {uw.shape}")
        if uh.shape[-1] != bins or ud.shape[-1] != bins - 1:
            raise ValueError(f"{where}: with K = {bins} bins (from unnormalized_widths {uw.shape}), "
                             f"unnormalized_heights must end in K = {bins} and unnormalized_derivatives in "
                             f"K - 1 = {bins - 1}; got {uh.shape} and {ud.shape}")
        try:
            np.broadcast_shapes(uw.shape[:-1], uh.shape[:-1], ud.shape[:-1])
        except ValueError:
            raise ValueError(f"{where}: the parameters' batch shapes {uw.shape[:-1]}, {uh.shape[:-1]}, "
                             f"{ud.shape[:-1]} do not broadcast together") from None
        self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative = spline_constants(
            bins, bound, min_bin_width, min_bin_height, min_derivative, where)
        self.parameterization = check_parameterization(parameterization, where)
        self.params.update(zip(_KEYS, (uw, uh, ud)))

    @classmethod
    def identity(cls, bins=8, shape=(), *, bound=5.0, min_bin_width=1e-3, min_bin_height=1e-3,
                 min_derivative=1e-3, parameterization="softplus", dtype=np.float64, name=None):
        """A spline of ``bins`` bins, one per element of ``shape``, with all-zero parameters: the identity map."""
        if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"{name or cls.__name__}.identity: bins must be a positive int; got {bins!r}")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return cls(np.zeros(shape + (bins,), dtype=dtype), np.zeros(shape + (bins,), dtype=dtype),
                   np.zeros(shape + (bins - 1,), dtype=dtype), bound=bound, min_bin_width=min_bin_width,
                   min_bin_height=min_bin_height, min_derivative=min_derivative, parameterization=parameterization,
                   dtype=dtype, name=name)

    @property
    def bins(self):
        """``K``, the number of bins of every spline."""
        return self.params["unnormalized_widths"].shape[-1]

    @property
    def batch_shape(self):
        """The broadcast batch shape of the parameters (``()`` for one spline shared by all elements)."""
        return np.broadcast_shapes(*(self.params[key].shape[:-1] for key in _KEYS))

    # ------------------------------------------------------------------ the passes
    def _constants(self):
        return self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative

    def _check(self, arr, method, argname):
        where = f"{self.name}.{method}"
        # an optimizer may have written NaN into a parameter: refuse to compute with it
        for key in _KEYS:
            check_finite(self.params[key], where, f"parameter {key}")
        try:
            return np.broadcast_shapes(arr.shape, self.batch_shape)
        except ValueError:
            raise ValueError(f"{where}: {argname} of shape {arr.shape} does not broadcast against the parameters' "
                             f"batch shape {self.batch_shape}") from None

    def _flat(self, v, shape):
        """``v`` and the parameters broadcast to ``shape`` and laid out as the kernels' ``(n, 1)`` rows."""
        n = int(np.prod(shape, dtype=np.int64))
        rows = np.broadcast_to(v, shape).reshape(n, 1)
        params = [np.broadcast_to(self.params[key], shape + self.params[key].shape[-1:]).reshape(n, 1, -1)
                  for key in _KEYS]
        return rows, params

    def _run(self, v, method, argname, kernel):
        shape = self._check(v, method, argname)
        rows, params = self._flat(v, shape)
        out, log_det = np.empty_like(rows), np.empty_like(rows)
        kernel(rows, *params, *self._constants(), out, log_det, parameterization=self.parameterization)
        return out.reshape(shape), log_det.reshape(shape)

    def _forward_and_log_det(self, x):
        return self._run(x, "forward", "x", rqs_forward_numpy)

    def _inverse_and_log_det(self, y):
        return self._run(y, "inverse", "y", rqs_inverse_numpy)

    def _forward(self, x):
        return self._forward_and_log_det(x)[0]

    def _inverse(self, y):
        return self._inverse_and_log_det(y)[0]

    def _forward_log_det(self, x):
        return self._run(x, "forward_log_det_jacobian", "x", rqs_forward_numpy)[1]

    def _inverse_log_det(self, y):
        return self._run(y, "inverse_log_det_jacobian", "y", rqs_inverse_numpy)[1]

    # the backward kernels recompute the bin-local quantities from the pass's input, all they need
    def _forward_pass(self, x):
        y, log_det = self._run(x, "forward_vjp", "x", rqs_forward_numpy)
        return y, log_det, x

    def _inverse_pass(self, y):
        x, log_det = self._run(y, "inverse_vjp", "y", rqs_inverse_numpy)
        return x, log_det, y

    def _backward(self, point, grad_out, grad_log_det, kernel):
        shape = grad_out.shape
        rows, params = self._flat(point, shape)
        grad_in = np.empty_like(rows)
        grads = [np.empty(p.shape, dtype=rows.dtype) for p in params]
        kernel(rows, *params, *self._constants(), grad_out.reshape(rows.shape), grad_log_det.reshape(rows.shape),
               grad_in, *grads, parameterization=self.parameterization)
        named = {key: sum_to_shape(g.reshape(shape + g.shape[-1:]), self.params[key].shape)
                 for key, g in zip(_KEYS, grads)}
        return sum_to_shape(grad_in.reshape(shape), point.shape), named

    def _forward_backward(self, x, grad_y, grad_log_det):
        return self._backward(x, grad_y, grad_log_det, rqs_forward_backward_numpy)

    def _inverse_backward(self, y, grad_x, grad_log_det):
        return self._backward(y, grad_x, grad_log_det, rqs_inverse_backward_numpy)

    def _is_increasing(self):
        return True
