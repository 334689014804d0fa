"""Composition: ``Chain`` and ``Invert``."""

import numpy as np

from .base import Bijector


def _common_dtype(bijectors, where):
    dtypes = {b.dtype for b in bijectors if b.dtype is not None}
    if len(dtypes) > 1:
        listed = ", ".join(f"{b.name}: {b.dtype}" for b in bijectors if b.dtype is not None)
        raise TypeError(f"{where}: bijectors mix dtypes ({listed}); build them all with one dtype")
    return dtypes.pop() if dtypes else None


class Chain(Bijector):
    """Composition of bijectors, applied like function composition.

    ``Chain([f, g, h]).forward(x) == f(g(h(x)))``: the LAST bijector acts first
    on the forward (sampling) pass, as in TensorFlow Probability. The log-det
    is the sum of the members' log-dets, each reduced to the chain's event
    rank (the largest of its members').

    Parameters are named ``"<position>.<name>"``, e.g. ``"0.shift"``.
    """

    def __init__(self, bijectors, *, name=None):
        bijectors = list(bijectors)
        if not bijectors:
            raise ValueError("Chain needs at least one bijector")
        for i, b in enumerate(bijectors):
            if not isinstance(b, Bijector):
                raise TypeError(f"Chain: element {i} is a {type(b).__name__}, not a Bijector")
        super().__init__(dtype=_common_dtype(bijectors, "Chain"), name=name)
        self.bijectors = bijectors
        self.event_ndims = max(b.event_ndims for b in bijectors)

    def _children(self):
        return [(str(i), b) for i, b in enumerate(self.bijectors)]

    def _member_reduce(self, b, log_det):
        return b._reduce(log_det, self.event_ndims)

    def _forward(self, x):
        for b in reversed(self.bijectors):
            x = b._forward(x)
        return x

    def _inverse(self, y):
        for b in self.bijectors:
            y = b._inverse(y)
        return y

    def _forward_and_log_det(self, x):
        total = 0.0
        for b in reversed(self.bijectors):
            x, log_det = b._forward_and_log_det(x)
            total = total + self._member_reduce(b, log_det)
        return x, self._as_log_det(total, x)

    def _inverse_and_log_det(self, y):
        total = 0.0
        for b in self.bijectors:
            y, log_det = b._inverse_and_log_det(y)
            total = total + self._member_reduce(b, log_det)
        return y, self._as_log_det(total, y)

    def _forward_log_det(self, x):
        return self._forward_and_log_det(x)[1]

    def _inverse_log_det(self, y):
        return self._inverse_and_log_det(y)[1]

    def _as_log_det(self, total, out):
        shape = out.shape[:out.ndim - self.event_ndims]
        return np.broadcast_to(np.asarray(total, dtype=out.dtype), shape).copy() \
            if np.shape(total) != shape else total

    def _forward_pass(self, x):
        total = 0.0
        ctxs = []
        for b in reversed(self.bijectors):
            x, log_det, ctx = b._forward_pass(x)
            ctxs.append((ctx, log_det.shape))
            total = total + self._member_reduce(b, log_det)
        return x, self._as_log_det(total, x), ctxs

    def _inverse_pass(self, y):
        total = 0.0
        ctxs = []
        for b in self.bijectors:
            y, log_det, ctx = b._inverse_pass(y)
            ctxs.append((ctx, log_det.shape))
            total = total + self._member_reduce(b, log_det)
        return y, self._as_log_det(total, y), ctxs

    def _member_grad_log_det(self, b, grad_log_det, shape):
        extra = self.event_ndims - b.event_ndims
        g = grad_log_det.reshape(grad_log_det.shape + (1,) * extra) if extra else grad_log_det
        return np.broadcast_to(g, shape)

    def _forward_backward(self, ctxs, grad_y, grad_log_det):
        grads = {}
        members = list(reversed(self.bijectors))
        for i in range(len(members) - 1, -1, -1):
            b = members[i]
            ctx, shape = ctxs[i]
            grad_y, g = b._forward_backward(ctx, grad_y, self._member_grad_log_det(b, grad_log_det, shape))
            pos = len(self.bijectors) - 1 - i
            grads.update({f"{pos}.{k}": v for k, v in g.items()})
        return grad_y, grads

    def _inverse_backward(self, ctxs, grad_x, grad_log_det):
        grads = {}
        for i in range(len(self.bijectors) - 1, -1, -1):
            b = self.bijectors[i]
            ctx, shape = ctxs[i]
            grad_x, g = b._inverse_backward(ctx, grad_x, self._member_grad_log_det(b, grad_log_det, shape))
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return grad_x, grads

    def _is_increasing(self):
        increasing = True
        for b in self.bijectors:
            increasing = increasing == b._is_increasing()
        return increasing

    def __repr__(self):
        return f"{self.name}([" + ", ".join(repr(b) for b in self.bijectors) + "])"


class Invert(Bijector):
    """Swap the directions of a bijector: ``Invert(b).forward == b.inverse``.

    ``Invert(Exp())`` is the logarithm. Parameters are named ``"bijector.<name>"``.
    """

    def __init__(self, bijector, *, name=None):
        if not isinstance(bijector, Bijector):
            raise TypeError(f"Invert: expected a Bijector; got {type(bijector).__name__}")
        super().__init__(dtype=bijector.dtype, name=name or f"Invert({bijector.name})")
        self.bijector = bijector
        self.event_ndims = bijector.event_ndims

    def _children(self):
        return [("bijector", self.bijector)]

    def _check_input_shape(self, arr, where, argname):
        self.bijector._check_input_shape(arr, where, argname)

    def _forward(self, x):
        return self.bijector._inverse(x)

    def _inverse(self, y):
        return self.bijector._forward(y)

    def _forward_log_det(self, x):
        return self.bijector._inverse_log_det(x)

    def _inverse_log_det(self, y):
        return self.bijector._forward_log_det(y)

    def _forward_and_log_det(self, x):
        return self.bijector._inverse_and_log_det(x)

    def _inverse_and_log_det(self, y):
        return self.bijector._forward_and_log_det(y)

    def _forward_pass(self, x):
        return self.bijector._inverse_pass(x)

    def _inverse_pass(self, y):
        return self.bijector._forward_pass(y)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        grad, grads = self.bijector._inverse_backward(ctx, grad_y, grad_log_det)
        return grad, {f"bijector.{k}": v for k, v in grads.items()}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        grad, grads = self.bijector._forward_backward(ctx, grad_x, grad_log_det)
        return grad, {f"bijector.{k}": v for k, v in grads.items()}

    def _is_increasing(self):
        return self.bijector._is_increasing()

    def __repr__(self):
        return f"Invert({self.bijector!r})"
