"""Composition: ``Chain`` and ``Invert``."""

import numpy as np

from .base import CONTEXT_GRAD, Bijector


def _common_context_size(bijectors, where):
    sizes = {b.context_size for b in bijectors if b.context_size}
    if len(sizes) > 1:
        listed = ", ".join(f"{b.name}: {b.context_size}" for b in bijectors if b.context_size)
        raise ValueError(f"{where}: conditional members take contexts of different sizes ({listed}); they all "
                         f"receive the same context, so build them with one context size")
    return sizes.pop() if sizes else 0


def _add_context_grad(total, grads):
    """Pop a member's context gradient out of ``grads`` and add it to ``total``."""
    g = grads.pop(CONTEXT_GRAD, None)
    if g is None:
        return total
    return g if total is None else total + g


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

    A chain holding conditional members is conditional: every conditional
    member receives the chain's ``context``, the others ignore it.
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
        self.context_size = _common_context_size(bijectors, "Chain")

    def _children(self):
        return [(str(i), b) for i, b in enumerate(self.bijectors)]

    def flatten(self):
        return [layer for b in self.bijectors for layer in b.flatten()]

    def _member_reduce(self, b, log_det):
        return b._reduce(log_det, self.event_ndims)

    def _forward(self, x, context=None):
        for b in reversed(self.bijectors):
            x = b._forward(x, *b._context_args(context))
        return x

    def _inverse(self, y, context=None):
        for b in self.bijectors:
            y = b._inverse(y, *b._context_args(context))
        return y

    def _forward_and_log_det(self, x, context=None):
        total = 0.0
        for b in reversed(self.bijectors):
            x, log_det = b._forward_and_log_det(x, *b._context_args(context))
            total = total + self._member_reduce(b, log_det)
        return x, self._as_log_det(total, x)

    def _inverse_and_log_det(self, y, context=None):
        total = 0.0
        for b in self.bijectors:
            y, log_det = b._inverse_and_log_det(y, *b._context_args(context))
            total = total + self._member_reduce(b, log_det)
        return y, self._as_log_det(total, y)

    def _forward_log_det(self, x, context=None):
        return self._forward_and_log_det(x, context)[1]

    def _inverse_log_det(self, y, context=None):
        return self._inverse_and_log_det(y, context)[1]

    def _as_log_det(self, total, out):
        shape = out.shape[:out.ndim - self.event_ndims]
        return np.broadcast_to(np.asarray(total, dtype=out.dtype), shape).copy() \
            if np.shape(total) != shape else total

    def _forward_pass(self, x, context=None):
        total = 0.0
        ctxs = []
        for b in reversed(self.bijectors):
            x, log_det, ctx = b._forward_pass(x, *b._context_args(context))
            ctxs.append((ctx, log_det.shape))
            total = total + self._member_reduce(b, log_det)
        return x, self._as_log_det(total, x), ctxs

    def _inverse_pass(self, y, context=None):
        total = 0.0
        ctxs = []
        for b in self.bijectors:
            y, log_det, ctx = b._inverse_pass(y, *b._context_args(context))
            ctxs.append((ctx, log_det.shape))
            total = total + self._member_reduce(b, log_det)
        return y, self._as_log_det(total, y), ctxs

    def _member_grad_log_det(self, b, grad_log_det, shape):
        extra = self.event_ndims - b.event_ndims
        g = grad_log_det.reshape(grad_log_det.shape + (1,) * extra) if extra else grad_log_det
        return np.broadcast_to(g, shape)

    def _forward_backward(self, ctxs, grad_y, grad_log_det):
        grads = {}
        grad_context = None
        members = list(reversed(self.bijectors))
        for i in range(len(members) - 1, -1, -1):
            b = members[i]
            ctx, shape = ctxs[i]
            grad_y, g = b._forward_backward(ctx, grad_y, self._member_grad_log_det(b, grad_log_det, shape))
            grad_context = _add_context_grad(grad_context, g)
            pos = len(self.bijectors) - 1 - i
            grads.update({f"{pos}.{k}": v for k, v in g.items()})
        if grad_context is not None:
            grads[CONTEXT_GRAD] = grad_context
        return grad_y, grads

    def _inverse_backward(self, ctxs, grad_x, grad_log_det):
        grads = {}
        grad_context = None
        for i in range(len(self.bijectors) - 1, -1, -1):
            b = self.bijectors[i]
            ctx, shape = ctxs[i]
            grad_x, g = b._inverse_backward(ctx, grad_x, self._member_grad_log_det(b, grad_log_det, shape))
            grad_context = _add_context_grad(grad_context, g)
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        if grad_context is not None:
            grads[CONTEXT_GRAD] = grad_context
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
        self.context_size = bijector.context_size

    def _children(self):
        return [("bijector", self.bijector)]

    def _check_input_shape(self, arr, where, argname):
        self.bijector._check_input_shape(arr, where, argname)

    def _forward(self, x, *context):
        return self.bijector._inverse(x, *context)

    def _inverse(self, y, *context):
        return self.bijector._forward(y, *context)

    def _forward_log_det(self, x, *context):
        return self.bijector._inverse_log_det(x, *context)

    def _inverse_log_det(self, y, *context):
        return self.bijector._forward_log_det(y, *context)

    def _forward_and_log_det(self, x, *context):
        return self.bijector._inverse_and_log_det(x, *context)

    def _inverse_and_log_det(self, y, *context):
        return self.bijector._forward_and_log_det(y, *context)

    def _forward_pass(self, x, *context):
        return self.bijector._inverse_pass(x, *context)

    def _inverse_pass(self, y, *context):
        return self.bijector._forward_pass(y, *context)

    def _prefixed(self, result):
        grad, grads = result
        return grad, {k if k == CONTEXT_GRAD else f"bijector.{k}": v for k, v in grads.items()}

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return self._prefixed(self.bijector._inverse_backward(ctx, grad_y, grad_log_det))

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return self._prefixed(self.bijector._forward_backward(ctx, grad_x, grad_log_det))

    def _is_increasing(self):
        return self.bijector._is_increasing()

    def __repr__(self):
        return f"Invert({self.bijector!r})"
