"""The bijector protocol: passes, log-dets, their vector-Jacobian products.

Direction follows TensorFlow Probability: ``forward`` maps the base space to the
data space (sampling), ``inverse`` maps data to base (density evaluation).

Every bijector implements, privately and on already-validated arrays:

``_forward(x)``, ``_inverse(y)``
    the two maps;
``_forward_and_log_det(x)``, ``_inverse_and_log_det(y)``
    the fused passes, log-dets at the bijector's own event rank
    (``event_ndims``): elementwise bijectors return one log-det per element,
    vector bijectors one per vector;
``_forward_pass(x)`` / ``_forward_backward(ctx, grad_y, grad_log_det)``
    the forward pass keeping what its backward needs, and the backward: the
    gradient of ``sum(grad_y * y) + sum(grad_log_det * log_det)`` with respect
    to ``x`` and to every parameter (a vector-Jacobian product);
``_inverse_pass(y)`` / ``_inverse_backward(ctx, grad_x, grad_log_det)``
    the same for the inverse direction.

The public methods validate input (dtype, shape, finiteness), reduce log-dets
to the event rank the caller asks for, and expand the log-det gradient back.

Conditional bijectors (``context_size > 0``: couplings and autoregressive
layers built with ``context=c``, and the containers holding them) take the
context as one more positional argument of every private pass, already
broadcast to the batch shape: ``_forward_pass(x, context)``. Their backward
passes put the gradient of the context among the parameter gradients, under
the key :data:`CONTEXT_GRAD`; containers sum it over their members and the
public VJPs return it separately. Unconditional bijectors keep one-argument
passes: callers add the context only where ``context_size`` says so
(:meth:`Bijector._context_args`).
"""

import numpy as np

from .._validation import as_float_array, check_event_shape, sum_to_shape

CONTEXT_GRAD = "context"
"""Key of the context's gradient among the gradients a conditional bijector's backward pass returns."""


class Bijector:
    """Base class of all bijectors.

    Attributes
    ----------
    params : dict of str to ndarray
        Trainable arrays of this bijector (not of its children), updated in
        place by optimizers.
    event_ndims : int
        The smallest event rank the bijector acts on: 0 for elementwise maps,
        1 for maps of vectors.
    context_size : int
        Width of the conditioning input (0: unconditional). A conditional
        bijector needs ``context=`` in every public method: an array of shape
        ``(..., context_size)`` whose batch axes broadcast to the input's.
    dtype : numpy.dtype or None
        The float dtype of the parameters; ``None`` for parameter-free
        bijectors, which follow the dtype of their input.
    """

    event_ndims = 0
    context_size = 0

    def __init__(self, *, dtype=None, name=None):
        self.params = {}
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.name = name or type(self).__name__

    # ------------------------------------------------------------------ parameters
    def _children(self):
        """``(prefix, bijector)`` pairs of contained bijectors."""
        return ()

    def parameters(self):
        """Yield ``(dotted_name, array)`` for every trainable array, children included."""
        yield from self.params.items()
        for prefix, child in self._children():
            for key, value in child.parameters():
                yield f"{prefix}.{key}", value

    # ------------------------------------------------------------------ validation
    def _prepare(self, x, method, argname):
        where = f"{self.name}.{method}"
        arr = as_float_array(x, self.dtype, where, argname)
        self._check_input_shape(arr, where, argname)
        return arr

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, self.event_ndims, None, where, argname)

    def _context_args(self, context):
        """The extra arguments of this bijector's private passes: ``(context,)`` if conditional, else ``()``."""
        return (context,) if self.context_size else ()

    def _prepare_context(self, context, arr, method, argname="x", where=None):
        """Validate ``context`` and broadcast it to the batch shape of ``arr``; ``None`` if unconditional."""
        where = where or f"{self.name}.{method}"
        c = self.context_size
        if not c:
            if context is not None:
                raise ValueError(f"{where}: unconditional (built without a context), so it takes no context; "
                                 f"got one of shape {np.shape(context)}")
            return None
        if context is None:
            raise ValueError(f"{where}: conditional on a context of size {c}; pass context= an array of shape "
                             f"(..., {c}), one row per point or one row for all")
        ctx = as_float_array(context, self.dtype, where, "context")
        if ctx.ndim == 0 or ctx.shape[-1] != c:
            raise ValueError(f"{where}: context must have shape (..., {c}); got shape {ctx.shape}")
        batch = arr.shape[:arr.ndim - self.event_ndims]
        try:
            return np.broadcast_to(ctx, batch + (c,))
        except ValueError:
            raise ValueError(f"{where}: context of shape {ctx.shape} does not broadcast to the batch shape "
                             f"{batch} of {argname} (one context row per point, or one row for all)") from None

    def _resolve_event_ndims(self, event_ndims, arr, method):
        if event_ndims is None:
            return self.event_ndims
        if not isinstance(event_ndims, (int, np.integer)) or isinstance(event_ndims, bool):
            raise TypeError(f"{self.name}.{method}: event_ndims must be an int; got {event_ndims!r}")
        if event_ndims < self.event_ndims:
            raise ValueError(f"{self.name}.{method}: event_ndims must be at least {self.event_ndims} "
                             f"for this bijector; got {event_ndims}")
        if event_ndims > arr.ndim:
            raise ValueError(f"{self.name}.{method}: event_ndims={event_ndims} exceeds the rank of the "
                             f"input (shape {arr.shape})")
        return int(event_ndims)

    def _reduce(self, log_det, event_ndims):
        extra = event_ndims - self.event_ndims
        if extra == 0:
            return log_det
        return log_det.sum(axis=tuple(range(log_det.ndim - extra, log_det.ndim)))

    def _expand(self, grad_log_det, native_shape, event_ndims, method, dtype):
        """Broadcast the gradient of a reduced log-det back to the native log-det shape.

        Every native log-det that was summed into one reduced value receives that value's gradient.
        """
        extra = event_ndims - self.event_ndims
        expected = native_shape[:len(native_shape) - extra] if extra else native_shape
        grad_log_det = as_float_array(grad_log_det, dtype, f"{self.name}.{method}", "grad_log_det")
        try:
            grad_log_det = np.broadcast_to(grad_log_det, expected)
        except ValueError:
            raise ValueError(f"{self.name}.{method}: grad_log_det must have the log-det's shape {expected}; "
                             f"got {grad_log_det.shape}") from None
        if extra:
            grad_log_det = np.broadcast_to(grad_log_det.reshape(expected + (1,) * extra), native_shape)
        return grad_log_det

    def _prepare_upstream(self, grad, like, method, argname):
        if grad is None:
            return np.zeros_like(like)
        grad = as_float_array(grad, like.dtype, f"{self.name}.{method}", argname)
        if grad.shape != like.shape:
            raise ValueError(f"{self.name}.{method}: {argname} must have shape {like.shape}; got {grad.shape}")
        return grad

    # ------------------------------------------------------------------ public API
    def _prepared(self, value, method, argname, context):
        arr = self._prepare(value, method, argname)
        return arr, self._context_args(self._prepare_context(context, arr, method, argname))

    def forward(self, x, context=None):
        """Map base-space points ``x`` to data space (``context``: see :attr:`context_size`)."""
        x, extra = self._prepared(x, "forward", "x", context)
        return self._forward(x, *extra)

    def inverse(self, y, context=None):
        """Map data-space points ``y`` back to base space."""
        y, extra = self._prepared(y, "inverse", "y", context)
        return self._inverse(y, *extra)

    def forward_log_det_jacobian(self, x, event_ndims=None, context=None):
        """log|det dforward/dx| at ``x``, summed over ``event_ndims`` trailing axes."""
        x, extra = self._prepared(x, "forward_log_det_jacobian", "x", context)
        k = self._resolve_event_ndims(event_ndims, x, "forward_log_det_jacobian")
        return self._reduce(self._forward_log_det(x, *extra), k)

    def inverse_log_det_jacobian(self, y, event_ndims=None, context=None):
        """log|det dinverse/dy| at ``y``; equals ``-forward_log_det_jacobian(inverse(y))``."""
        y, extra = self._prepared(y, "inverse_log_det_jacobian", "y", context)
        k = self._resolve_event_ndims(event_ndims, y, "inverse_log_det_jacobian")
        return self._reduce(self._inverse_log_det(y, *extra), k)

    def forward_and_log_det(self, x, event_ndims=None, context=None):
        """``(forward(x), forward_log_det_jacobian(x))`` in one pass."""
        x, extra = self._prepared(x, "forward_and_log_det", "x", context)
        k = self._resolve_event_ndims(event_ndims, x, "forward_and_log_det")
        y, log_det = self._forward_and_log_det(x, *extra)
        return y, self._reduce(log_det, k)

    def inverse_and_log_det(self, y, event_ndims=None, context=None):
        """``(inverse(y), inverse_log_det_jacobian(y))`` in one pass."""
        y, extra = self._prepared(y, "inverse_and_log_det", "y", context)
        k = self._resolve_event_ndims(event_ndims, y, "inverse_and_log_det")
        x, log_det = self._inverse_and_log_det(y, *extra)
        return x, self._reduce(log_det, k)

    def forward_vjp(self, x, grad_y=None, grad_log_det=None, event_ndims=None, context=None):
        """Vector-Jacobian product of the forward pass.

        Returns ``(grad_x, grads)``: the gradient of
        ``sum(grad_y * forward(x)) + sum(grad_log_det * forward_log_det_jacobian(x, event_ndims))``
        with respect to ``x``, and a dict of its gradients with respect to
        every parameter, keyed as in :meth:`parameters`. ``None`` upstream
        gradients count as zeros. A conditional bijector returns
        ``(grad_x, grads, grad_context)``, the last of ``context``'s shape.
        """
        x, extra = self._prepared(x, "forward_vjp", "x", context)
        k = self._resolve_event_ndims(event_ndims, x, "forward_vjp")
        y, log_det, ctx = self._forward_pass(x, *extra)
        grad_y = self._prepare_upstream(grad_y, y, "forward_vjp", "grad_y")
        grad_log_det = (np.zeros_like(log_det) if grad_log_det is None
                        else self._expand(grad_log_det, log_det.shape, k, "forward_vjp", x.dtype))
        return self._split_context_grad(self._forward_backward(ctx, grad_y, grad_log_det), context)

    def inverse_vjp(self, y, grad_x=None, grad_log_det=None, event_ndims=None, context=None):
        """Vector-Jacobian product of the inverse pass; see :meth:`forward_vjp`."""
        y, extra = self._prepared(y, "inverse_vjp", "y", context)
        k = self._resolve_event_ndims(event_ndims, y, "inverse_vjp")
        x, log_det, ctx = self._inverse_pass(y, *extra)
        grad_x = self._prepare_upstream(grad_x, x, "inverse_vjp", "grad_x")
        grad_log_det = (np.zeros_like(log_det) if grad_log_det is None
                        else self._expand(grad_log_det, log_det.shape, k, "inverse_vjp", y.dtype))
        return self._split_context_grad(self._inverse_backward(ctx, grad_x, grad_log_det), context)

    def _split_context_grad(self, result, context):
        if not self.context_size:
            return result
        grad, grads = result
        grads = dict(grads)
        grad_context = grads.pop(CONTEXT_GRAD)
        return grad, grads, sum_to_shape(grad_context, np.shape(context))

    def __call__(self, value):
        """``bijector(x)`` is ``forward(x)``; ``bijector(distribution)`` transforms it."""
        from ..distributions.base import Distribution
        if isinstance(value, Distribution):
            from ..distributions.transformed import TransformedDistribution
            return TransformedDistribution(value, self)
        return self.forward(value)

    def __repr__(self):
        shown = ", ".join(f"{k}={np.array2string(np.asarray(v), precision=4)}" for k, v in self.params.items())
        return f"{self.name}({shown})"

    # ------------------------------------------------------------------ defaults for subclasses
    # ``*context`` is empty for unconditional bijectors and ``(context,)`` for conditional ones
    def _forward_log_det(self, x, *context):
        return self._forward_and_log_det(x, *context)[1]

    def _inverse_log_det(self, y, *context):
        return self._inverse_and_log_det(y, *context)[1]

    def _forward_and_log_det(self, x, *context):
        return self._forward(x, *context), self._forward_log_det(x, *context)

    def _inverse_and_log_det(self, y, *context):
        x = self._inverse(y, *context)
        return x, -self._forward_log_det(x, *context)

    def _forward_pass(self, x, *context):
        y, log_det = self._forward_and_log_det(x, *context)
        return y, log_det, (x, y)

    def _inverse_pass(self, y, *context):
        x, log_det = self._inverse_and_log_det(y, *context)
        return x, log_det, (x, y)

    def _is_increasing(self):
        """Whether this scalar bijector increases (bool or bool array); only monotone scalar maps define it."""
        raise ValueError(f"{self.name} is not a monotone scalar bijector, so the CDF of a distribution "
                         f"transformed by it is not defined")

    # ---- the compiled engine
    def flatten(self):
        """The layers a flow runs, in order (a chain's members, flattened); ``[self]`` for a single layer."""
        return [self]

    def lower(self, d):
        """This layer as a spec of :mod:`nflow_np.kernels.specs` for a flow over ``d`` coordinates.

        The compiled engine runs a flow whose every layer lowers; a layer
        without a lowering raises :class:`~nflow_np.kernels.specs.Unsupported`
        here, and its flow runs the NumPy passes.
        """
        from ..kernels.specs import Unsupported
        raise Unsupported(f"{self.name} ({type(self).__name__}) is not compiled")


class PassBijector(Bijector):
    """A bijector whose maps and log-dets all come from its two passes.

    For layers whose cheapest way to a map is the full pass anyway (couplings,
    linear maps): subclasses define ``_forward_pass``/``_inverse_pass`` and
    their backward passes, and nothing else.
    """

    def _forward(self, x, *context):
        return self._forward_pass(x, *context)[0]

    def _inverse(self, y, *context):
        return self._inverse_pass(y, *context)[0]

    def _forward_and_log_det(self, x, *context):
        return self._forward_pass(x, *context)[:2]

    def _inverse_and_log_det(self, y, *context):
        return self._inverse_pass(y, *context)[:2]
