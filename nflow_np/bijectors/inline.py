"""``Inline``: a bijector from user functions."""

import numpy as np

from .. import _finite_diff
from .._validation import check_finite
from .base import Bijector


class Inline(Bijector):
    """A bijector built from plain functions, like TensorFlow Probability's ``Inline``.

    Parameters
    ----------
    forward_fn, inverse_fn : callable
        ``y = forward_fn(x)`` and its inverse; both take and return arrays of
        shape ``batch + event``.
    forward_log_det_jacobian_fn, inverse_log_det_jacobian_fn : callable, optional
        log|det J| of each direction, one value per event (shape ``batch``, or a
        constant). At least one is required; the other is derived from it as
        ``inverse_ldj(y) = -forward_ldj(inverse(y))`` (or the other way round).
    event_ndims : int
        0 for an elementwise map, 1 for a map of vectors, and so on.
    forward_vjp_fn, inverse_vjp_fn : callable, optional
        ``fn(x, grad_y, grad_log_det) -> grad_x``: the exact input gradient of
        ``sum(grad_y * forward_fn(x)) + sum(grad_log_det * forward_ldj(x))``
        (and likewise for the inverse). Without them the gradients are taken by
        fourth-order central finite differences (about 1e-10 relative in
        float64), which costs ``4 * event size`` calls per pass.
    is_increasing : bool, optional
        For scalar maps: whether the map increases. Needed for the CDF of a
        distribution transformed by it.

    An ``Inline`` bijector has no trainable parameters: the functions are
    opaque code. Check one with :func:`nflow_np.testing.check_bijector`.
    """

    def __init__(self, forward_fn, inverse_fn, forward_log_det_jacobian_fn=None,
                 inverse_log_det_jacobian_fn=None, event_ndims=0, *, forward_vjp_fn=None,
                 inverse_vjp_fn=None, is_increasing=None, dtype=None, name=None):
        super().__init__(dtype=dtype, name=name or "Inline")
        for label, fn in (("forward_fn", forward_fn), ("inverse_fn", inverse_fn)):
            if not callable(fn):
                raise TypeError(f"{self.name}: {label} must be callable")
        if forward_log_det_jacobian_fn is None and inverse_log_det_jacobian_fn is None:
            raise ValueError(f"{self.name}: give forward_log_det_jacobian_fn or inverse_log_det_jacobian_fn "
                             f"(the other is derived from it)")
        if not isinstance(event_ndims, (int, np.integer)) or event_ndims < 0:
            raise ValueError(f"{self.name}: event_ndims must be a non-negative int; got {event_ndims!r}")
        self.event_ndims = int(event_ndims)
        self._forward_fn = forward_fn
        self._inverse_fn = inverse_fn
        self._fldj_fn = forward_log_det_jacobian_fn
        self._ildj_fn = inverse_log_det_jacobian_fn
        self._forward_vjp_fn = forward_vjp_fn
        self._inverse_vjp_fn = inverse_vjp_fn
        self._increasing = is_increasing

    # ---- calling user code, checking what comes back
    def _call_map(self, fn, arr, method, label):
        out = np.asarray(fn(arr))
        if out.shape != arr.shape:
            raise ValueError(f"{self.name}.{method}: {label} returned shape {out.shape} for input shape {arr.shape}; "
                             f"a bijector keeps the shape")
        out = out.astype(arr.dtype, copy=False)
        check_finite(out, f"{self.name}.{method}", f"the output of {label}")
        return out

    def _call_log_det(self, fn, arr, method, label):
        batch = arr.shape[:arr.ndim - self.event_ndims]
        out = np.asarray(fn(arr))
        try:
            out = np.broadcast_to(out, batch).astype(arr.dtype)
        except ValueError:
            raise ValueError(f"{self.name}.{method}: {label} returned shape {out.shape}; expected one value per "
                             f"event, shape {batch}") from None
        check_finite(out, f"{self.name}.{method}", f"the output of {label}")
        return out

    def _forward(self, x):
        return self._call_map(self._forward_fn, x, "forward", "forward_fn")

    def _inverse(self, y):
        return self._call_map(self._inverse_fn, y, "inverse", "inverse_fn")

    def _forward_log_det(self, x):
        if self._fldj_fn is not None:
            return self._call_log_det(self._fldj_fn, x, "forward_log_det_jacobian", "forward_log_det_jacobian_fn")
        return -self._call_log_det(self._ildj_fn, self._forward(x), "forward_log_det_jacobian",
                                   "inverse_log_det_jacobian_fn")

    def _inverse_log_det(self, y):
        if self._ildj_fn is not None:
            return self._call_log_det(self._ildj_fn, y, "inverse_log_det_jacobian", "inverse_log_det_jacobian_fn")
        return -self._call_log_det(self._fldj_fn, self._inverse(y), "inverse_log_det_jacobian",
                                   "forward_log_det_jacobian_fn")

    def _forward_and_log_det(self, x):
        y = self._forward(x)
        if self._fldj_fn is not None:
            return y, self._forward_log_det(x)
        return y, -self._call_log_det(self._ildj_fn, y, "forward_and_log_det", "inverse_log_det_jacobian_fn")

    def _inverse_and_log_det(self, y):
        x = self._inverse(y)
        if self._ildj_fn is not None:
            return x, self._inverse_log_det(y)
        return x, -self._call_log_det(self._fldj_fn, x, "inverse_and_log_det", "forward_log_det_jacobian_fn")

    # ---- gradients: the user's, or finite differences
    def _numeric_vjp(self, map_fn, log_det_fn, point, grad_out, grad_log_det):
        axes = tuple(range(point.ndim - self.event_ndims, point.ndim))

        def value(p):
            return (grad_out * map_fn(p)).sum(axis=axes) + grad_log_det * log_det_fn(p)

        step = _finite_diff.default_step(point.dtype) * np.maximum(1.0, np.abs(point))
        grad, _ = _finite_diff.input_vjp(value, point, self.event_ndims, step)
        return grad

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, _ = ctx
        if self._forward_vjp_fn is not None:
            grad = np.asarray(self._forward_vjp_fn(x, grad_y, grad_log_det)).astype(x.dtype, copy=False)
        else:
            grad = self._numeric_vjp(self._forward, self._forward_log_det, x, grad_y, grad_log_det)
        return grad, {}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        _, y = ctx
        if self._inverse_vjp_fn is not None:
            grad = np.asarray(self._inverse_vjp_fn(y, grad_x, grad_log_det)).astype(y.dtype, copy=False)
        else:
            grad = self._numeric_vjp(self._inverse, self._inverse_log_det, y, grad_x, grad_log_det)
        return grad, {}

    def _is_increasing(self):
        if self.event_ndims != 0 or self._increasing is None:
            return super()._is_increasing()
        return bool(self._increasing)
