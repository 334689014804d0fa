"""Dense networks with hand-written backprop: a plain MLP and MADE's masked MLP.

Both are conditioners for bijectors: coupling layers use :class:`MLP`,
autoregressive flows use :class:`MaskedMLP`. Each pass works on a 2-D
``(batch, features)`` view of its input, so any number of leading batch axes
costs one reshape and every layer is one matrix product.

A pass is ``forward_with_cache(x) -> (out, cache)`` followed by
``backward(cache, grad_out) -> (grad_x, grads)``: the cache holds the layer
inputs (the weight gradients need them) and what the activation derivative
needs, nothing else. The cache is an opaque tuple; do not rely on its layout.
"""

import math

import numpy as np

from .._validation import as_float_array, as_generator, resolve_dtype, sum_to_shape
from .init import check_init, dense_layer

__all__ = ["ACTIVATIONS", "MLP", "MaskedMLP"]

ACTIVATIONS = ("relu", "tanh", "elu", "silu")


# ---- activations: each forward works in place on a fresh pre-activation, and each
# derivative is written in terms of what forward cached, so backward never recomputes
# a transcendental it already had.

def _activate(name, z):
    """Apply ``name`` to ``z`` in place; return ``(h, aux)`` with ``aux`` what the derivative needs besides ``h``."""
    if name == "relu":
        return np.maximum(z, 0.0, out=z), None
    if name == "tanh":
        return np.tanh(z, out=z), None
    if name == "elu":
        # max(z, 0) + expm1(min(z, 0)) is ELU without evaluating exp at large
        # positive z (which would overflow float32 and warn)
        neg = np.minimum(z, 0.0)
        np.expm1(neg, out=neg)
        np.maximum(z, 0.0, out=z)
        z += neg
        return z, None
    # silu: z * sigmoid(z); sigmoid via tanh is overflow-free in both dtypes
    s = np.tanh(0.5 * z)
    s *= 0.5
    s += 0.5
    z *= s
    return z, s


def _activation_grad(name, delta, h, aux):
    """Multiply ``delta`` in place by the activation's derivative, expressed through its output ``h``."""
    if name == "relu":
        delta *= h > 0.0
    elif name == "tanh":
        delta *= 1.0 - h * h
    elif name == "elu":
        # d/dz = 1 for z > 0, exp(z) = h + 1 for z <= 0; min(h, 0) + 1 is both at once
        delta *= np.minimum(h, 0.0) + 1.0
    else:
        # d/dz z*s = s + z*s*(1 - s) = s + h*(1 - s) = s*(1 - h) + h
        s = aux
        delta *= s * (1.0 - h) + h
    return delta


def _check_activation(activation, where):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {activation!r}; choose one of {', '.join(map(repr, ACTIVATIONS))}")
    return activation


def _check_count(value, where, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_hidden(hidden, where):
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, (bool, np.bool_)):
        hidden = (hidden,)
    try:
        hidden = tuple(hidden)
    except TypeError:
        raise ValueError(f"{where}: hidden must be a tuple of positive ints; got {hidden!r}") from None
    for h in hidden:
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)) or h < 1:
            raise ValueError(f"{where}: hidden must be a tuple of positive ints; got {hidden!r}")
    return tuple(int(h) for h in hidden)


class _DenseNet:
    """Shared passes of :class:`MLP` and :class:`MaskedMLP`.

    Subclasses set ``in_features``, ``out_features``, ``hidden``,
    ``activation``, ``context_features``, ``dtype`` and ``params`` and may
    override ``_weights`` (the weights a pass uses) and ``_finish_grads``.
    """

    # MaskedMLP wires the context straight to the outputs as well ("wc")
    _context_to_output = False

    def parameters(self):
        """Yield ``(name, array)`` for every trainable array; the arrays are ``params``'s own, not copies."""
        yield from self.params.items()

    def _weights(self):
        return [self.params[f"w{layer}"] for layer in range(len(self.hidden) + 1)]

    def _finish_grads(self, grads):
        return grads

    def lower(self):
        """This network as the compiled engine's :class:`nflow_np.kernels.specs.NetworkSpec`."""
        from ..kernels.specs import NetworkSpec
        masks = getattr(self, "masks", None)
        return NetworkSpec(params=self.params, activation=self.activation, context=self.context_features,
                       widths=(self.in_features + self.context_features,) + tuple(self.hidden) + (self.out_features,),
                       masks=None if masks is None else tuple(masks),
                       degrees=None if masks is None else tuple(self.degrees))

    def __repr__(self):
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return (f"{type(self).__name__}({self.in_features} -> {self.hidden} -> {self.out_features}, "
                f"activation={self.activation!r}, dtype={self.dtype.name}{ctx})")

    # ---- input checks
    def _inputs(self, x, context, method):
        """Validate ``x`` and ``context``; return the 2-D first-layer input and the shapes backward needs."""
        where = f"{type(self).__name__}.{method}"
        x = as_float_array(x, self.dtype, where, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x must have shape (..., {self.in_features}); got shape {x.shape}")
        if not self.context_features:
            if context is not None:
                raise ValueError(f"{where}: this network was built with context_features=0, so it takes no "
                                 f"context; got one of shape {np.shape(context)}")
            batch = x.shape[:-1]
            return x.reshape(math.prod(batch), self.in_features), batch, x.shape, None
        if context is None:
            raise ValueError(f"{where}: this network was built with context_features={self.context_features}; "
                             f"pass context of shape (..., {self.context_features})")
        c = as_float_array(context, self.dtype, where, "context")
        if c.ndim == 0 or c.shape[-1] != self.context_features:
            raise ValueError(f"{where}: context must have shape (..., {self.context_features}); got shape {c.shape}")
        try:
            batch = np.broadcast_shapes(x.shape[:-1], c.shape[:-1])
        except ValueError:
            raise ValueError(f"{where}: the batch shapes of x {x.shape[:-1]} and context {c.shape[:-1]} do not "
                             f"broadcast") from None
        n = math.prod(batch)
        x2 = np.broadcast_to(x, batch + x.shape[-1:]).reshape(n, self.in_features)
        c2 = np.broadcast_to(c, batch + c.shape[-1:]).reshape(n, self.context_features)
        return np.concatenate([x2, c2], axis=1), batch, x.shape, c.shape

    # ---- passes
    def _run(self, inp, keep):
        weights = self._weights()
        params = self.params
        hs, auxes = [], []
        h = inp
        for layer in range(len(self.hidden)):
            z = h @ weights[layer]
            z += params[f"b{layer}"]
            h, aux = _activate(self.activation, z)
            if keep:
                hs.append(h)
                auxes.append(aux)
        last = len(self.hidden)
        out = h @ weights[last]
        out += params[f"b{last}"]
        if self._context_to_output:
            out += inp[:, self.in_features:] @ params["wc"]
        return out, weights, hs, auxes

    def forward(self, x, context=None):
        """Network output.

        Parameters
        ----------
        x : array_like, shape (..., in_features), of the network's dtype
        context : array_like, shape (..., context_features), optional
            Required when ``context_features > 0``, refused otherwise. Its batch
            axes broadcast against ``x``'s.

        Returns
        -------
        ndarray, shape (..., out_features)
        """
        inp, batch, _, _ = self._inputs(x, context, "forward")
        out = self._run(inp, keep=False)[0]
        return out.reshape(batch + (self.out_features,))

    def _set_sizes(self, in_features, out_features, context_features, where):
        """The checked ``in_features``, ``out_features`` and ``context_features``; at least one input."""
        self.in_features = _check_count(in_features, where, "in_features", 0)
        self.out_features = _check_count(out_features, where, "out_features", 1)
        self.context_features = _check_count(context_features, where, "context_features", 0)
        if self.in_features + self.context_features < 1:
            raise ValueError(f"{where}: needs at least one input (in_features + context_features >= 1)")

    def _grad_rows(self, grad_out, batch, rows):
        """``grad_out`` checked against the output's shape ``batch + (out_features,)`` (or broadcast to it), as
        ``(rows, out_features)``."""
        where = f"{type(self).__name__}.backward"
        g = as_float_array(grad_out, self.dtype, where, "grad_out")
        out_shape = batch + (self.out_features,)
        if g.shape != out_shape:
            try:
                g = np.broadcast_to(g, out_shape)
            except ValueError:
                raise ValueError(f"{where}: grad_out must have the output's shape {out_shape}; got {g.shape}") from None
        return g.reshape(rows, self.out_features)

    def forward_with_cache(self, x, context=None):
        """Network output and the cache that :meth:`backward` takes.

        Returns
        -------
        out : ndarray, shape (..., out_features)
        cache : tuple
            Opaque; pass it to :meth:`backward`.
        """
        inp, batch, x_shape, c_shape = self._inputs(x, context, "forward_with_cache")
        out, weights, hs, auxes = self._run(inp, keep=True)
        return out.reshape(batch + (self.out_features,)), (inp, hs, auxes, weights, batch, x_shape, c_shape)

    def backward(self, cache, grad_out):
        """Vector-Jacobian product of the pass that made ``cache``.

        Parameters
        ----------
        cache : tuple
            From :meth:`forward_with_cache`.
        grad_out : array_like, shape (..., out_features)
            Gradient of a scalar loss with respect to the output (broadcast to
            the output's shape if it has fewer axes).

        Returns
        -------
        grad_x : ndarray, the shape of ``x``
        grad_context : ndarray, the shape of ``context``
            Only when ``context_features > 0``.
        grads : dict
            Keyed like ``params``, same shapes and dtype.
        """
        inp, hs, auxes, weights, batch, x_shape, c_shape = cache
        g = self._grad_rows(grad_out, batch, inp.shape[0])

        grads = {}
        last = len(self.hidden)
        grads[f"w{last}"] = (hs[-1] if last else inp).T @ g
        grads[f"b{last}"] = g.sum(axis=0)
        delta = g
        for layer in range(last - 1, -1, -1):
            delta = delta @ weights[layer + 1].T
            delta = _activation_grad(self.activation, delta, hs[layer], auxes[layer])
            grads[f"w{layer}"] = (hs[layer - 1] if layer else inp).T @ delta
            grads[f"b{layer}"] = delta.sum(axis=0)
        grad_in = delta @ weights[0].T
        grads = self._finish_grads(grads)

        n_in = self.in_features
        grad_x = sum_to_shape(grad_in[:, :n_in].reshape(batch + (n_in,)), x_shape)
        if not self.context_features:
            return grad_x, grads
        grad_c = grad_in[:, n_in:]
        if self._context_to_output:
            c2 = inp[:, n_in:]
            grads["wc"] = c2.T @ g
            grad_c = grad_c + g @ self.params["wc"].T
        grad_c = sum_to_shape(grad_c.reshape(batch + (self.context_features,)), c_shape)
        return grad_x, grad_c, grads


class MLP(_DenseNet):
    """A fully connected network ``x -> act(x W0 + b0) -> ... -> h W_L + b_L`` (linear output).

    Parameters
    ----------
    in_features : int
    out_features : int
    hidden : tuple of int, default (64, 64)
        Hidden widths; ``()`` gives a single linear layer.
    activation : {"relu", "tanh", "elu", "silu"}
    rng : numpy.random.Generator or int, optional
        Source of the initial weights.
    dtype : float64 (default) or float32
        Every parameter, input and output is of this dtype; inputs of the other
        float dtype are refused, not cast.
    zero_last : bool, default False
        Start the last layer (weights and bias) at zero, so the network outputs
        exactly 0 and a coupling layer built on it starts as the identity.
    context_features : int, default 0
        Width of a conditioning input concatenated to ``x`` before the first
        layer; ``forward`` and ``backward`` then take and return it too.
    init : {"uniform", "normal"}, default "uniform"
        ``"uniform"``: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as
        PyTorch's ``nn.Linear``; ``"normal"``: He-normal weights for
        relu/elu/silu, Glorot-normal for tanh, zero biases. See
        :func:`nflow_np.nn.init.dense_layer`.

    Attributes
    ----------
    params : dict of str to ndarray
        ``"w0"`` of shape ``(in_features + context_features, h0)``, ``"b0"`` of
        shape ``(h0,)``, ..., ``"wL"`` of shape ``(h_last, out_features)``,
        ``"bL"`` of shape ``(out_features,)``. Optimizers update them in place.

    """

    def __init__(self, in_features, out_features, hidden=(64, 64), activation="relu", *, rng=None,
                 dtype=np.float64, zero_last=False, context_features=0, init="uniform"):
        where = type(self).__name__
        self._set_sizes(in_features, out_features, context_features, where)
        self.hidden = _check_hidden(hidden, where)
        self.activation = _check_activation(activation, where)
        self.dtype = resolve_dtype(dtype, where=type(self).__name__)
        self.init = check_init(init, where)
        rng = as_generator(rng)
        widths = (self.in_features + self.context_features,) + self.hidden + (self.out_features,)
        self.params = {}
        last = len(self.hidden)
        for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            w, b = dense_layer(rng, self.activation, fan_in, fan_out, self.dtype, self.init)
            if zero_last and layer == last:
                w, b = np.zeros_like(w), np.zeros_like(b)
            self.params[f"w{layer}"] = w
            self.params[f"b{layer}"] = b


def made_degrees(order, hidden):
    """MADE degrees: one int array for the inputs, then one per hidden layer.

    Input ``i`` has degree ``order[i] + 1``; hidden unit ``k`` has degree
    ``k mod max(D - 1, 1) + 1``, cyclic rather than random so that every degree
    in ``1..D-1`` is present whenever the layer is at least ``D - 1`` wide.
    """
    d = len(order)
    degrees = [np.asarray(order, dtype=np.int64) + 1]
    for width in hidden:
        degrees.append(np.arange(width, dtype=np.int64) % max(d - 1, 1) + 1)
    return degrees


class MaskedMLP(_DenseNet):
    """MADE: an MLP whose weights are masked so output ``i`` depends only on earlier inputs.

    With ``order`` the position of each input in the autoregressive order,
    every output for feature ``i`` depends on ``x[j]`` only if
    ``order[j] < order[i]``: hidden units carry degrees, a hidden unit sees
    inputs / units of degree ``<=`` its own, and an output of degree
    ``order[i] + 1`` sees hidden units of degree strictly below it.

    Parameters
    ----------
    features : int
        ``D``, the number of autoregressive inputs.
    hidden : tuple of int, default (64, 64)
    out_per_feature : int, default 2
        Parameters per feature (2 for an affine MAF's shift and log-scale).
    activation : {"relu", "tanh", "elu", "silu"}
    order : array_like of int, optional
        A permutation of ``range(features)``; ``order[i]`` is input ``i``'s
        position. Default: the identity.
    rng : numpy.random.Generator or int, optional
    dtype : float64 (default) or float32
    zero_last : bool, default False
        Zero every weight and bias feeding the outputs (``"wL"``, ``"bL"`` and
        ``"wc"``): the network outputs exactly 0.
    context_features : int, default 0
        Width of a conditioning input. It is unmasked: it feeds every unit of
        the first hidden layer (extra rows of ``"w0"``) and, through ``"wc"``,
        every output directly. The direct path matters: the first feature in
        the order sees no hidden unit, so without it its outputs could not
        depend on the context.

    Attributes
    ----------
    params : dict of str to ndarray
        ``"w0"`` of shape ``(features + context_features, h0)``, ``"b0"``, ...,
        ``"wL"`` of shape ``(h_last, out_per_feature * features)``, ``"bL"``;
        plus ``"wc"`` of shape ``(context_features, out_per_feature * features)``
        when there is a context and at least one hidden layer (with
        ``hidden=()`` the context rows of ``"w0"`` already reach the outputs).
        Masked entries are stored as 0 but the passes multiply by the mask
        anyway, so an optimizer step cannot leak into them.
    masks : list of ndarray
        0/1 arrays of the weights' shapes and dtype (context rows all ones).
    degrees : list of ndarray
        Degrees of the inputs and of each hidden layer's units.
    order : ndarray of int
    in_features, out_features : int
        ``features`` and ``out_per_feature * features``.

    Notes
    -----
    Outputs are laid out as ``(..., out_per_feature, features)`` flattened:
    ``out[..., k * features + i]`` is parameter ``k`` of feature ``i``. With
    ``features == 1`` no masked connection is allowed, so the outputs are the
    biases (plus the context term): the first variable depends on nothing.

    References: Germain, Gregor, Murray and Larochelle, "MADE: Masked
    Autoencoder for Distribution Estimation", ICML 2015.
    """

    def __init__(self, features, hidden=(64, 64), out_per_feature=2, activation="relu", *, order=None, rng=None,
                 dtype=np.float64, zero_last=False, context_features=0, init="uniform"):
        where = type(self).__name__
        self.features = _check_count(features, where, "features", 1)
        self.out_per_feature = _check_count(out_per_feature, where, "out_per_feature", 1)
        self.context_features = _check_count(context_features, where, "context_features", 0)
        self.in_features = self.features
        self.out_features = self.out_per_feature * self.features
        self.hidden = _check_hidden(hidden, where)
        self.activation = _check_activation(activation, where)
        self.dtype = resolve_dtype(dtype, where=type(self).__name__)
        self.order = self._check_order(order, where)
        self.degrees = made_degrees(self.order, self.hidden)
        self._context_to_output = bool(self.context_features and self.hidden)

        c = self.context_features
        out_degrees = np.tile(self.order + 1, self.out_per_feature)
        self.masks = []
        for layer, deg_in in enumerate(self.degrees):
            if layer + 1 < len(self.degrees):
                allowed = deg_in[:, None] <= self.degrees[layer + 1][None, :]
            else:
                allowed = deg_in[:, None] < out_degrees[None, :]
            if layer == 0 and c:
                allowed = np.vstack([allowed, np.ones((c, allowed.shape[1]), dtype=bool)])
            self.masks.append(allowed.astype(self.dtype))

        self.init = check_init(init, where)
        rng = as_generator(rng)
        self.params = {}
        last = len(self.hidden)
        for layer, mask in enumerate(self.masks):
            fan_in, fan_out = mask.shape
            w, b = dense_layer(rng, self.activation, fan_in, fan_out, self.dtype, self.init)
            if zero_last and layer == last:
                w, b = np.zeros_like(w), np.zeros_like(b)
            self.params[f"w{layer}"] = w * mask
            self.params[f"b{layer}"] = b
        if self._context_to_output:
            wc, _ = dense_layer(rng, self.activation, c, self.out_features, self.dtype, self.init)
            self.params["wc"] = np.zeros_like(wc) if zero_last else wc

    def _check_order(self, order, where):
        d = self.features
        if order is None:
            return np.arange(d)
        arr = np.asarray(order)
        if arr.shape != (d,) or arr.dtype.kind not in "iu" or not np.array_equal(np.sort(arr), np.arange(d)):
            raise ValueError(f"{where}: order must be a permutation of range({d}) (order[i] is input i's "
                             f"position); got {order!r}")
        return arr.astype(np.int64)

    def _weights(self):
        return [self.params[f"w{layer}"] * mask for layer, mask in enumerate(self.masks)]

    def _finish_grads(self, grads):
        for layer, mask in enumerate(self.masks):
            grads[f"w{layer}"] *= mask
        return grads

    def __repr__(self):
        return super().__repr__()[:-1] + f", order={self.order.tolist()})"
