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
"""

import numpy as np

from .._validation import as_float_array, check_event_shape


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
    dtype : numpy.dtype or None
        The float dtype of the parameters; ``None`` for parameter-free
        bijectors, which follow the dtype of their input.
    """

    event_ndims = 0

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
    def forward(self, x):
        """Map base-space points ``x`` to data space."""
        return self._forward(self._prepare(x, "forward", "x"))

    def inverse(self, y):
        """Map data-space points ``y`` back to base space."""
        return self._inverse(self._prepare(y, "inverse", "y"))

    def forward_log_det_jacobian(self, x, event_ndims=None):
        """log|det dforward/dx| at ``x``, summed over ``event_ndims`` trailing axes."""
        x = self._prepare(x, "forward_log_det_jacobian", "x")
        k = self._resolve_event_ndims(event_ndims, x, "forward_log_det_jacobian")
        return self._reduce(self._forward_log_det(x), k)

    def inverse_log_det_jacobian(self, y, event_ndims=None):
        """log|det dinverse/dy| at ``y``; equals ``-forward_log_det_jacobian(inverse(y))``."""
        y = self._prepare(y, "inverse_log_det_jacobian", "y")
        k = self._resolve_event_ndims(event_ndims, y, "inverse_log_det_jacobian")
        return self._reduce(self._inverse_log_det(y), k)

    def forward_and_log_det(self, x, event_ndims=None):
        """``(forward(x), forward_log_det_jacobian(x))`` in one pass."""
        x = self._prepare(x, "forward_and_log_det", "x")
        k = self._resolve_event_ndims(event_ndims, x, "forward_and_log_det")
        y, log_det = self._forward_and_log_det(x)
        return y, self._reduce(log_det, k)

    def inverse_and_log_det(self, y, event_ndims=None):
        """``(inverse(y), inverse_log_det_jacobian(y))`` in one pass."""
        y = self._prepare(y, "inverse_and_log_det", "y")
        k = self._resolve_event_ndims(event_ndims, y, "inverse_and_log_det")
        x, log_det = self._inverse_and_log_det(y)
        return x, self._reduce(log_det, k)

    def forward_vjp(self, x, grad_y=None, grad_log_det=None, event_ndims=None):
        """Vector-Jacobian product of the forward pass.

        Returns ``(grad_x, grads)``: the gradient of
        ``sum(grad_y * forward(x)) + sum(grad_log_det * forward_log_det_jacobian(x, event_ndims))``
        with respect to ``x``, and a dict of its gradients with respect to
        every parameter, keyed as in :meth:`parameters`. ``None`` upstream
        gradients count as zeros.
        """
        x = self._prepare(x, "forward_vjp", "x")
        k = self._resolve_event_ndims(event_ndims, x, "forward_vjp")
        y, log_det, ctx = self._forward_pass(x)
        grad_y = self._prepare_upstream(grad_y, y, "forward_vjp", "grad_y")
        grad_log_det = (np.zeros_like(log_det) if grad_log_det is None
                        else self._expand(grad_log_det, log_det.shape, k, "forward_vjp", x.dtype))
        return self._forward_backward(ctx, grad_y, grad_log_det)

    def inverse_vjp(self, y, grad_x=None, grad_log_det=None, event_ndims=None):
        """Vector-Jacobian product of the inverse pass; see :meth:`forward_vjp`."""
        y = self._prepare(y, "inverse_vjp", "y")
        k = self._resolve_event_ndims(event_ndims, y, "inverse_vjp")
        x, log_det, ctx = self._inverse_pass(y)
        grad_x = self._prepare_upstream(grad_x, x, "inverse_vjp", "grad_x")
        grad_log_det = (np.zeros_like(log_det) if grad_log_det is None
                        else self._expand(grad_log_det, log_det.shape, k, "inverse_vjp", y.dtype))
        return self._inverse_backward(ctx, grad_x, grad_log_det)

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
    def _forward_log_det(self, x):
        return self._forward_and_log_det(x)[1]

    def _inverse_log_det(self, y):
        return self._inverse_and_log_det(y)[1]

    def _forward_and_log_det(self, x):
        return self._forward(x), self._forward_log_det(x)

    def _inverse_and_log_det(self, y):
        x = self._inverse(y)
        return x, -self._forward_log_det(x)

    def _forward_pass(self, x):
        y, log_det = self._forward_and_log_det(x)
        return y, log_det, (x, y)

    def _inverse_pass(self, y):
        x, log_det = self._inverse_and_log_det(y)
        return x, log_det, (x, y)

    def _is_increasing(self):
        """Whether this scalar bijector increases (bool or bool array); only monotone scalar maps define it."""
        raise ValueError(f"{self.name} is not a monotone scalar bijector, so the CDF of a distribution "
                         f"transformed by it is not defined")


class PassBijector(Bijector):
    """A bijector whose maps and log-dets all come from its two passes.

    For layers whose cheapest way to a map is the full pass anyway (couplings,
    linear maps): subclasses define ``_forward_pass``/``_inverse_pass`` and
    their backward passes, and nothing else.
    """

    def _forward(self, x):
        return self._forward_pass(x)[0]

    def _inverse(self, y):
        return self._inverse_pass(y)[0]

    def _forward_and_log_det(self, x):
        return self._forward_pass(x)[:2]

    def _inverse_and_log_det(self, y):
        return self._inverse_pass(y)[:2]

