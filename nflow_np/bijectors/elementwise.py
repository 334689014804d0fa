"""Elementwise bijectors: scalar maps applied to every element.

Each one states its map ``y = f(x)``, its log-derivative ``g(x) = log|f'(x)|``
and the partial derivatives the shared backward needs. The inverse pass's
gradients follow from the forward partials by the implicit function theorem,
so every bijector here has both VJPs from one set of formulas.
"""

import numpy as np

from .._special import log_sigmoid, ndtr, ndtri, sigmoid, softplus
from .._validation import as_float_array, check_finite, check_interval, resolve_dtype, sum_to_shape
from .base import Bijector

# Python floats, so that float32 arrays stay float32 (NumPy scalars would promote them).
_HALF_LOG_2PI = float(0.5 * np.log(2.0 * np.pi))
_LOG_2 = float(np.log(2.0))


def _param(value, dtype, where, name):
    arr = np.array(as_float_array(value, dtype, where, name), dtype=dtype, copy=True)
    return arr


class ElementwiseBijector(Bijector):
    """Base of scalar bijectors.

    Subclasses define ``_fwd(x)``, ``_inv(y)``, ``_fldj(x)`` (the elementwise
    forward log-derivative), optionally ``_ildj(y)``, and
    ``_derivatives(x, y)`` returning ``(f_x, g_x, {param: (f_p, g_p)})``:
    the derivative of the map, of its log-derivative, and the partials of both
    with respect to each parameter. ``forward_domain`` / ``inverse_domain``
    are open intervals ``(low, high)`` checked on every call (``None``: all reals).

    The direction of the map (which the CDF of a transformed distribution
    needs) is declared by the class attribute ``increasing`` (True or False);
    left ``None``, it is detected by comparing the map at two points of the
    forward domain, per parameter element. A map whose direction depends on
    its parameters in a way two points cannot tell overrides
    ``_is_increasing()`` (bool, or a bool array shaped like the parameters).
    :func:`nflow_np.testing.check_bijector` checks the direction against the
    slope at every point it is given.
    """

    event_ndims = 0
    forward_domain = None
    inverse_domain = None
    increasing = None

    # ---- the maps, with domain checks
    def _check(self, arr, domain, method, argname):
        if self.params:
            # an optimizer may have written NaN into a parameter: refuse to compute with it
            for key, value in self.params.items():
                check_finite(value, f"{self.name}.{method}", f"parameter {key}")
            try:
                np.broadcast_shapes(arr.shape, *(p.shape for p in self.params.values()))
            except ValueError:
                shapes = ", ".join(f"{k} {p.shape}" for k, p in self.params.items())
                raise ValueError(f"{self.name}.{method}: {argname} of shape {arr.shape} does not broadcast "
                                 f"against the parameters ({shapes})") from None
        if domain is not None:
            check_interval(arr, domain[0], domain[1], f"{self.name}.{method}", argname)

    def _forward(self, x):
        self._check(x, self.forward_domain, "forward", "x")
        return self._fwd(x)

    def _inverse(self, y):
        self._check(y, self.inverse_domain, "inverse", "y")
        return self._inv(y)

    def _forward_log_det(self, x):
        self._check(x, self.forward_domain, "forward_log_det_jacobian", "x")
        return self._full(self._fldj(x), x)

    def _inverse_log_det(self, y):
        self._check(y, self.inverse_domain, "inverse_log_det_jacobian", "y")
        return self._full(self._ildj(y), y)

    def _forward_and_log_det(self, x):
        self._check(x, self.forward_domain, "forward", "x")
        y = self._fwd(x)
        return y, self._full(self._fldj(x), y)

    def _inverse_and_log_det(self, y):
        self._check(y, self.inverse_domain, "inverse", "y")
        x = self._inv(y)
        return x, self._full(self._ildj(y), x)

    def _ildj(self, y):
        return -self._fldj(self._inv(y))

    def _full(self, log_det, like):
        """Give a log-det the broadcast shape of the input and parameters."""
        shape = np.broadcast_shapes(np.shape(like), *(p.shape for p in self.params.values()))
        log_det = np.asarray(log_det, dtype=like.dtype)
        if log_det.shape != shape:
            log_det = np.broadcast_to(log_det, shape).copy()
        return log_det

    # ---- backward passes shared by all elementwise bijectors
    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, y = ctx
        f_x, g_x, partials = self._derivatives(x, y)
        grad_x = grad_y * f_x
        if not _is_zero(g_x):
            grad_x = grad_x + grad_log_det * g_x
        grads = {}
        for name, (f_p, g_p) in partials.items():
            g = grad_y * f_p
            if not _is_zero(g_p):
                g = g + grad_log_det * g_p
            grads[name] = sum_to_shape(np.broadcast_to(g, y.shape), self.params[name].shape)
        return sum_to_shape(grad_x, x.shape), grads

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        # x = f^{-1}(y), log-det = -g(x): dx/dy = 1/f_x, dx/dp = -f_p/f_x.
        x, y = ctx
        f_x, g_x, partials = self._derivatives(x, y)
        upstream = grad_x if _is_zero(g_x) else grad_x - grad_log_det * g_x
        grad_y = upstream / f_x
        grads = {}
        for name, (f_p, g_p) in partials.items():
            g = -f_p * grad_y
            if not _is_zero(g_p):
                g = g - grad_log_det * g_p
            grads[name] = sum_to_shape(np.broadcast_to(g, x.shape), self.params[name].shape)
        return sum_to_shape(grad_y, y.shape), grads

    def _is_increasing(self):
        if self.increasing is not None:
            return bool(self.increasing)
        low, high = self._probe_points()
        shape = np.broadcast_shapes(*(p.shape for p in self.params.values()))
        dtype = self.dtype or np.dtype(np.float64)
        with np.errstate(all="ignore"):
            at_low = self._fwd(np.full(shape, low, dtype=dtype))
            at_high = self._fwd(np.full(shape, high, dtype=dtype))
        if not np.all((at_low < at_high) | (at_low > at_high)):
            raise ValueError(f"{self.name}: cannot tell whether the map increases or decreases (forward({low}) and "
                             f"forward({high}) are equal or not finite); set the class attribute increasing, or "
                             f"override _is_increasing()")
        increasing = at_high > at_low
        return bool(increasing) if increasing.ndim == 0 else increasing

    def _probe_points(self):
        """Two points of the forward domain, in increasing order."""
        low, high = self.forward_domain if self.forward_domain is not None else (-np.inf, np.inf)
        low, high = float(np.max(low)), float(np.min(high))
        if np.isfinite(low) and np.isfinite(high):
            return low + 0.25 * (high - low), low + 0.75 * (high - low)
        if np.isfinite(low):
            return low + 1.0, low + 2.0
        if np.isfinite(high):
            return high - 2.0, high - 1.0
        return -1.0, 1.0


def _is_zero(v):
    return isinstance(v, (int, float)) and v == 0


class Identity(ElementwiseBijector):
    """y = x. Log-det 0."""

    increasing = True

    def _fwd(self, x):
        return x.copy()

    def _inv(self, y):
        return y.copy()

    def _fldj(self, x):
        return np.zeros_like(x)

    def _ildj(self, y):
        return np.zeros_like(y)

    def _derivatives(self, x, y):
        return 1.0, 0, {}


class Shift(ElementwiseBijector):
    """y = x + shift. Log-det 0.

    Parameters
    ----------
    shift : array_like
        Broadcasts against the input.
    dtype : dtype, optional
        float64 unless ``shift`` is a float32 array or ``dtype`` says otherwise.
    """

    increasing = True

    def __init__(self, shift, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, shift, where=type(self).__name__), name=name)
        self.params["shift"] = _param(shift, self.dtype, f"{self.name}.__init__", "shift")

    def _fwd(self, x):
        return x + self.params["shift"]

    def _inv(self, y):
        return y - self.params["shift"]

    def _fldj(self, x):
        return 0.0

    def _ildj(self, y):
        return 0.0

    def _derivatives(self, x, y):
        return 1.0, 0, {"shift": (1.0, 0)}


class Scale(ElementwiseBijector):
    """y = scale * x, with scale non-zero (negative scales reverse the axis). Log-det log|scale|."""

    def __init__(self, scale, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, scale, where=type(self).__name__), name=name)
        scale = _param(scale, self.dtype, f"{self.name}.__init__", "scale")
        if np.any(scale == 0):
            raise ValueError(f"{self.name}: scale must be non-zero; got {scale}")
        self.params["scale"] = scale

    def _scale(self, method):
        scale = self.params["scale"]
        if np.any(scale == 0):
            raise ValueError(f"{self.name}.{method}: scale became zero, so the map is not invertible")
        return scale

    def _fwd(self, x):
        return x * self._scale("forward")

    def _inv(self, y):
        return y / self._scale("inverse")

    def _fldj(self, x):
        return np.log(np.abs(self._scale("forward_log_det_jacobian")))

    def _ildj(self, y):
        return -np.log(np.abs(self._scale("inverse_log_det_jacobian")))

    def _derivatives(self, x, y):
        scale = self.params["scale"]
        return scale, 0, {"scale": (x, 1.0 / scale)}

    def _is_increasing(self):
        return self.params["scale"] > 0


class Exp(ElementwiseBijector):
    """y = exp(x); its inverse is the logarithm (``Invert(Exp())``). Log-det x."""

    increasing = True
    inverse_domain = (0.0, np.inf)

    def _fwd(self, x):
        return np.exp(x)

    def _inv(self, y):
        return np.log(y)

    def _fldj(self, x):
        return x

    def _ildj(self, y):
        return -np.log(y)

    def _derivatives(self, x, y):
        return y, 1.0, {}


class Sigmoid(ElementwiseBijector):
    """y = low + (high - low) * sigmoid(x), mapping the reals onto (low, high).

    Log-det ``log(high - low) + log_sigmoid(x) + log_sigmoid(-x)``, computed in
    that form so that it stays finite far in the tails. Without ``low`` and
    ``high`` this is the standard logistic sigmoid onto (0, 1) and has no
    parameters; given, they are trainable parameters.
    """

    increasing = True

    def __init__(self, low=None, high=None, *, dtype=None, name=None):
        if (low is None) != (high is None):
            raise ValueError("Sigmoid: give both low and high, or neither")
        given = low is not None or dtype is not None
        super().__init__(dtype=resolve_dtype(dtype, low, high, where=type(self).__name__) if given else None,
                         name=name)
        if low is not None:
            where = f"{self.name}.__init__"
            low = _param(low, self.dtype, where, "low")
            high = _param(high, self.dtype, where, "high")
            if not np.all(high > low):
                raise ValueError(f"{self.name}: high must exceed low; got low={low}, high={high}")
            self.params["low"] = low
            self.params["high"] = high

    def _bounds(self):
        if "low" in self.params:
            return self.params["low"], self.params["high"]
        return 0.0, 1.0

    @property
    def inverse_domain(self):
        return self._bounds()

    def _fwd(self, x):
        low, high = self._bounds()
        s = sigmoid(x)
        return s if "low" not in self.params else low + (high - low) * s

    def _inv(self, y):
        low, high = self._bounds()
        # logit of (y - low)/(high - low), written as a difference of logs so that
        # values close to either bound keep their precision.
        return np.log(y - low) - np.log(high - y)

    def _fldj(self, x):
        low, high = self._bounds()
        ld = log_sigmoid(x) + log_sigmoid(-x)
        return ld if "low" not in self.params else ld + np.log(high - low)

    def _ildj(self, y):
        low, high = self._bounds()
        ld = np.log(y - low) + np.log(high - y)
        return -ld if "low" not in self.params else np.log(high - low) - ld

    def _derivatives(self, x, y):
        low, high = self._bounds()
        s, t = sigmoid(x), sigmoid(-x)
        width = high - low
        f_x = width * s * t
        g_x = t - s
        if "low" not in self.params:
            return f_x, g_x, {}
        return f_x, g_x, {"low": (t, -1.0 / width), "high": (s, 1.0 / width)}


class Tanh(ElementwiseBijector):
    """y = tanh(x), onto (-1, 1). Log-det ``2 * (log 2 - x - softplus(-2x))`` (stable in the tails)."""

    increasing = True
    inverse_domain = (-1.0, 1.0)

    def _fwd(self, x):
        return np.tanh(x)

    def _inv(self, y):
        return np.arctanh(y)

    def _fldj(self, x):
        return 2.0 * (_LOG_2 - x - softplus(-2.0 * x))

    def _ildj(self, y):
        return -np.log1p(-y) - np.log1p(y)

    def _derivatives(self, x, y):
        # sech^2 from x, not 1 - y^2, which cancels in the tails
        return np.exp(self._fldj(x)), -2.0 * y, {}


class Softsign(ElementwiseBijector):
    """``y = x / (1 + |x|)``, onto (-1, 1). Log-det ``-2 log(1 + |x|)``."""

    increasing = True
    inverse_domain = (-1.0, 1.0)

    def _fwd(self, x):
        return x / (1.0 + np.abs(x))

    def _inv(self, y):
        return y / (1.0 - np.abs(y))

    def _fldj(self, x):
        return -2.0 * np.log1p(np.abs(x))

    def _ildj(self, y):
        return -2.0 * np.log1p(-np.abs(y))

    def _derivatives(self, x, y):
        d = 1.0 + np.abs(x)
        return 1.0 / (d * d), -2.0 * np.sign(x) / d, {}


class Softplus(ElementwiseBijector):
    """y = log(1 + exp(x)), onto (0, inf). Log-det ``log_sigmoid(x)``.

    The inverse ``x = y + log(-expm1(-y))`` stays accurate for small and large y.
    """

    increasing = True
    inverse_domain = (0.0, np.inf)

    def _fwd(self, x):
        return softplus(x)

    def _inv(self, y):
        return y + np.log(-np.expm1(-y))

    def _fldj(self, x):
        return log_sigmoid(x)

    def _ildj(self, y):
        return -np.log(-np.expm1(-y))

    def _derivatives(self, x, y):
        return sigmoid(x), sigmoid(-x), {}


class LeakyReLU(ElementwiseBijector):
    """y = x for x >= 0, alpha * x for x < 0 (a parametric ReLU), alpha > 0.

    The trainable parameter is ``log_alpha``, so gradient steps keep alpha
    positive; ``alpha`` reads it back. Log-det 0 for x >= 0, log(alpha) below.
    """

    increasing = True

    def __init__(self, alpha=0.2, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, alpha, where=type(self).__name__), name=name)
        alpha = _param(alpha, self.dtype, f"{self.name}.__init__", "alpha")
        if not np.all(alpha > 0):
            raise ValueError(f"{self.name}: alpha must be positive; got {alpha}")
        self.params["log_alpha"] = np.array(np.log(alpha), dtype=self.dtype)

    @property
    def alpha(self):
        return np.exp(self.params["log_alpha"])

    def _fwd(self, x):
        return np.where(x >= 0, x, self.alpha * x)

    def _inv(self, y):
        return np.where(y >= 0, y, y / self.alpha)

    def _fldj(self, x):
        return np.where(x >= 0, 0.0, self.params["log_alpha"]).astype(x.dtype, copy=False)

    def _ildj(self, y):
        return np.where(y >= 0, 0.0, -self.params["log_alpha"]).astype(y.dtype, copy=False)

    def _derivatives(self, x, y):
        neg = x < 0
        alpha = self.alpha
        f_x = np.where(neg, alpha, 1.0)
        return f_x, 0, {"log_alpha": (np.where(neg, y, 0.0), neg.astype(x.dtype))}


class NormalCDF(ElementwiseBijector):
    """y = Phi(x), the standard normal CDF, onto (0, 1). Log-det ``log phi(x) = -x^2/2 - log sqrt(2 pi)``.

    The inverse is ``ndtri``, accurate to about 1e-14 relative in float64; the
    log-det is exact arithmetic on x, so it stays finite at x = -30 and beyond.
    """

    increasing = True
    inverse_domain = (0.0, 1.0)

    def _fwd(self, x):
        return ndtr(x)

    def _inv(self, y):
        return ndtri(y)

    def _fldj(self, x):
        return -0.5 * x * x - _HALF_LOG_2PI

    def _ildj(self, y):
        x = ndtri(y)
        return 0.5 * x * x + _HALF_LOG_2PI

    def _derivatives(self, x, y):
        return np.exp(-0.5 * x * x - _HALF_LOG_2PI), -x, {}


class Power(ElementwiseBijector):
    """y = x ** power on x > 0, power != 0 (trainable). Log-det ``log|power| + (power - 1) log x``.

    Negative powers map (0, inf) onto itself decreasingly.
    """

    forward_domain = (0.0, np.inf)
    inverse_domain = (0.0, np.inf)

    def __init__(self, power, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, power, where=type(self).__name__), name=name)
        power = _param(power, self.dtype, f"{self.name}.__init__", "power")
        if np.any(power == 0):
            raise ValueError(f"{self.name}: power must be non-zero; got {power}")
        self.params["power"] = power

    def _fwd(self, x):
        return x ** self.params["power"]

    def _inv(self, y):
        return y ** (1.0 / self.params["power"])

    def _fldj(self, x):
        p = self.params["power"]
        return np.log(np.abs(p)) + (p - 1.0) * np.log(x)

    def _ildj(self, y):
        p = self.params["power"]
        return -np.log(np.abs(p)) + (1.0 / p - 1.0) * np.log(y)

    def _derivatives(self, x, y):
        p = self.params["power"]
        log_x = np.log(x)
        return p * y / x, (p - 1.0) / x, {"power": (y * log_x, 1.0 / p + log_x)}

    def _is_increasing(self):
        return self.params["power"] > 0
