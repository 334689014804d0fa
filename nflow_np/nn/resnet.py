"""Residual conditioners with hand-written backprop: :class:`ResidualMLP` and the masked :class:`ResidualMADE`.

Both map their input to a hidden width ``H`` with a linear layer, run ``blocks``
pre-activation residual blocks at that width and map back with a linear layer::

    h_0     = [x, c] W_in + b_in
    h_{k+1} = h_k + (act(act(h_k) W_k0 + b_k0)) W_k1 + b_k1        k = 0 .. blocks-1
    out     = h_K W_out + b_out                         (+ c W_c for the MADE)

The second linear layer of every block starts at U(-1e-3, 1e-3) (bias 0), so
each block starts close to the identity and a deep net trains like a shallow
one at first. The masked form keeps MADE's autoregressive property: every
hidden layer carries the same degrees, the block's weights are masked
``degree_in <= degree_out``, so the skip connection adds unit ``j`` to a unit of
the same degree, and the output layer is masked ``degree < output degree``.

Passes follow :mod:`nflow_np.nn.mlp`: ``forward_with_cache`` then
``backward(cache, grad_out)``, which returns ``(grad_x, grads)`` or, with a
context, ``(grad_x, grad_context, grads)``.

References: He, Zhang, Ren and Sun, "Identity Mappings in Deep Residual
Networks", ECCV 2016; Durkan, Bekasov, Murray and Papamakarios, "Neural Spline
Flows", NeurIPS 2019 (residual and masked residual conditioners).
"""

import numpy as np

from .._validation import as_generator, resolve_dtype, sum_to_shape
from .init import check_init, dense_layer
from .mlp import _activate, _activation_grad, _check_activation, _check_count, _DenseNet, made_degrees

__all__ = ["ResidualMLP", "ResidualMADE"]

# the scale of each block's second layer at the start: small, so a block starts near the identity
BLOCK_INIT_SCALE = 1e-3


class _ResidualNet(_DenseNet):
    """Shared passes of :class:`ResidualMLP` and :class:`ResidualMADE` (``_DenseNet`` supplies input checks)."""

    def _build(self, rng, init, zero_last, in_width):
        check_init(init, type(self).__name__)
        self.init = init
        rng = as_generator(rng)
        H, act, dt = self.width, self.activation, self.dtype
        p = {}
        p["in_w"], p["in_b"] = dense_layer(rng, act, in_width, H, dt, init)
        for k in range(self.blocks):
            p[f"block{k}_w0"], p[f"block{k}_b0"] = dense_layer(rng, act, H, H, dt, init)
            p[f"block{k}_w1"] = rng.uniform(-BLOCK_INIT_SCALE, BLOCK_INIT_SCALE, (H, H)).astype(dt)
            p[f"block{k}_b1"] = np.zeros(H, dtype=dt)
        w, b = dense_layer(rng, act, H, self.out_features, dt, init)
        p["out_w"], p["out_b"] = (np.zeros_like(w), np.zeros_like(b)) if zero_last else (w, b)
        self.params = p
        return rng

    @property
    def hidden(self):
        """``(width,) * blocks``: the form the frames' ``hidden=`` takes for a residual conditioner."""
        return (self.width,) * self.blocks

    def _weights(self):
        return {k: v for k, v in self.params.items() if k.endswith(("_w", "_w0", "_w1"))}

    def lower(self):
        """This network as the compiled engine's :class:`~nflow_np.kernels.specs.NetworkSpec` (``residual=True``;
        its passes: :mod:`nflow_np.kernels.residual`)."""
        from ..kernels.specs import NetworkSpec
        names = ["in_w", "in_b"]
        for k in range(self.blocks):
            names += [f"block{k}_w0", f"block{k}_b0", f"block{k}_w1", f"block{k}_b1"]
        names += ["out_w", "out_b"]
        masks = getattr(self, "masks", None)
        hidden = (self.width,) * (2 * self.blocks + 1)
        return NetworkSpec(params=self.params, activation=self.activation, context=self.context_features,
                           widths=(self.in_features + self.context_features,) + hidden + (self.out_features,),
                           masks=None if masks is None else tuple(masks[key] for key in names[::2]),
                           degrees=None if masks is None else (self.degrees[0],) + (self.degrees[1],) * len(hidden),
                           residual=True, names=tuple(names))

    def __repr__(self):
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return (f"{type(self).__name__}({self.in_features} -> {self.blocks} blocks of {self.width} -> "
                f"{self.out_features}, activation={self.activation!r}, dtype={self.dtype.name}{ctx})")

    def _run(self, inp, keep):
        w = self._weights()
        p = self.params
        act = self.activation
        h = inp @ w["in_w"]
        h += p["in_b"]
        cache = []
        for k in range(self.blocks):
            a, a_aux = _activate(act, h.copy())
            u = a @ w[f"block{k}_w0"]
            u += p[f"block{k}_b0"]
            v, v_aux = _activate(act, u)
            t = v @ w[f"block{k}_w1"]
            t += p[f"block{k}_b1"]
            if keep:
                cache.append((a, a_aux, v, v_aux))
            h = h + t
        out = h @ w["out_w"]
        out += p["out_b"]
        if self._context_to_output:
            out += inp[:, self.in_features:] @ p["wc"]
        return out, w, h, cache

    def forward_with_cache(self, x, context=None):
        """Network output and the cache that :meth:`backward` takes (see :meth:`MLP.forward_with_cache
        <nflow_np.nn.MLP.forward_with_cache>`)."""
        inp, batch, x_shape, c_shape = self._inputs(x, context, "forward_with_cache")
        out, w, h, cache = self._run(inp, keep=True)
        return out.reshape(batch + (self.out_features,)), (inp, h, cache, w, batch, x_shape, c_shape)

    def backward(self, cache, grad_out):
        """Vector-Jacobian product of the pass that made ``cache``; returns as :meth:`MLP.backward
        <nflow_np.nn.MLP.backward>`."""
        inp, h_last, blocks, w, batch, x_shape, c_shape = cache
        g = self._grad_rows(grad_out, batch, inp.shape[0])
        act = self.activation
        grads = {"out_w": h_last.T @ g, "out_b": g.sum(axis=0)}
        gh = g @ w["out_w"].T
        for k in range(self.blocks - 1, -1, -1):
            a, a_aux, v, v_aux = blocks[k]
            grads[f"block{k}_w1"] = v.T @ gh
            grads[f"block{k}_b1"] = gh.sum(axis=0)
            gu = _activation_grad(act, gh @ w[f"block{k}_w1"].T, v, v_aux)
            grads[f"block{k}_w0"] = a.T @ gu
            grads[f"block{k}_b0"] = gu.sum(axis=0)
            ga = _activation_grad(act, gu @ w[f"block{k}_w0"].T, a, a_aux)
            gh = gh + ga
        grads["in_w"] = inp.T @ gh
        grads["in_b"] = gh.sum(axis=0)
        grad_in = gh @ w["in_w"].T
        grads = self._finish_grads(grads)
        grads = {key: grads[key] for key in self.params if key in grads}

        n_in = self.in_features
        grad_x = sum_to_shape(grad_in[:, :n_in].reshape(batch + (n_in,)), x_shape)
        if not self.context_features:
            return grad_x, grads
        grad_c = grad_in[:, n_in:]
        if self._context_to_output:
            grads["wc"] = inp[:, n_in:].T @ g
            grad_c = grad_c + g @ self.params["wc"].T
        grad_c = sum_to_shape(grad_c.reshape(batch + (self.context_features,)), c_shape)
        return grad_x, grad_c, grads


def _check_width(width, where):
    return _check_count(width, where, "width", 1)


class ResidualMLP(_ResidualNet):
    """A residual network: a linear layer to ``width``, ``blocks`` residual blocks, a linear layer out.

    See the module docstring for the formulas. Each block is
    ``h -> h + W_1 act(W_0 act(h) + b_0) + b_1``.

    Parameters
    ----------
    in_features : int
    out_features : int
    width : int, default 64
        Width of the residual stream and of every block.
    blocks : int, default 2
        Number of residual blocks (0: a linear-in, linear-out network).
    activation : {"relu", "tanh", "elu", "silu"}
    rng : numpy.random.Generator or int, optional
    dtype : float64 (default) or float32
    zero_last : bool, default False
        Start the output layer at zero (the network outputs exactly 0).
    context_features : int, default 0
        Width of a conditioning input concatenated to ``x`` before the first layer.
    init : {"uniform", "normal"}, default "uniform"
        The input, block-first and output layers' start (:func:`nflow_np.nn.init.dense_layer`).

    Attributes
    ----------
    params : dict of str to ndarray
        ``"in_w"`` ``(in_features + context_features, width)``, ``"in_b"``;
        ``"block{k}_w0"``, ``"block{k}_b0"``, ``"block{k}_w1"``, ``"block{k}_b1"``
        (``(width, width)`` and ``(width,)``); ``"out_w"`` ``(width, out_features)``, ``"out_b"``.

    References: He, Zhang, Ren and Sun, "Identity Mappings in Deep Residual
    Networks", ECCV 2016; Durkan et al., "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(self, in_features, out_features, width=64, blocks=2, activation="relu", *, rng=None,
                 dtype=np.float64, zero_last=False, context_features=0, init="uniform"):
        where = type(self).__name__
        self._set_sizes(in_features, out_features, context_features, where)
        self.width = _check_width(width, where)
        self.blocks = _check_count(blocks, where, "blocks", 0)
        self.activation = _check_activation(activation, where)
        self.dtype = resolve_dtype(dtype, where=where)
        self._build(rng, init, zero_last, self.in_features + self.context_features)


class ResidualMADE(_ResidualNet):
    """A masked residual network (residual MADE): output ``i`` depends only on inputs before ``i`` in ``order``.

    Every hidden layer carries the degrees ``k mod max(D - 1, 1) + 1`` of
    :func:`~nflow_np.nn.made_degrees`; the input layer is masked
    ``degree(input) <= degree(unit)``, both layers of every block
    ``degree(unit) <= degree(unit')`` (so the skip connection, which adds a unit
    to itself, keeps the property), and the output layer
    ``degree(unit) < order[i] + 1``. The context is unmasked, fed to the input
    layer and, through ``"wc"``, straight to the outputs (the first feature in
    the order sees no hidden unit).

    Parameters
    ----------
    features : int
    width : int, default 64
    blocks : int, default 2
    out_per_feature : int, default 2
    activation : {"relu", "tanh", "elu", "silu"}
    order : array_like of int, optional
        ``order[i]`` is input ``i``'s position (a permutation of ``range(features)``).
    rng, dtype, zero_last, context_features, init
        As in :class:`ResidualMLP`; ``zero_last`` zeroes ``"wc"`` too.

    Attributes
    ----------
    params : dict of str to ndarray
        As :class:`ResidualMLP`, plus ``"wc"`` ``(context_features, out_features)`` with a context.
    masks : dict of str to ndarray
        The 0/1 mask of every weight matrix, by parameter name (context rows all ones).
    degrees : list of ndarray
        Degrees of the inputs and of the hidden units.

    Notes
    -----
    Outputs are laid out as :class:`~nflow_np.nn.MaskedMLP`'s:
    ``out[..., k * features + i]`` is parameter ``k`` of feature ``i``.

    References: Germain et al., "MADE", ICML 2015; Durkan, Bekasov, Murray and
    Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """

    def __init__(self, features, width=64, blocks=2, out_per_feature=2, activation="relu", *, order=None, rng=None,
                 dtype=np.float64, zero_last=False, context_features=0, init="uniform"):
        where = type(self).__name__
        self.features = _check_count(features, where, "features", 1)
        self.out_per_feature = _check_count(out_per_feature, where, "out_per_feature", 1)
        self.context_features = _check_count(context_features, where, "context_features", 0)
        self.in_features = self.features
        self.out_features = self.out_per_feature * self.features
        self.width = _check_width(width, where)
        self.blocks = _check_count(blocks, where, "blocks", 0)
        self.activation = _check_activation(activation, where)
        self.dtype = resolve_dtype(dtype, where=where)
        from .mlp import MaskedMLP
        self.order = MaskedMLP._check_order(self, order, where)
        self.degrees = made_degrees(self.order, (self.width,))
        self._context_to_output = bool(self.context_features)
        deg_in, deg_h = self.degrees
        out_degrees = np.tile(self.order + 1, self.out_per_feature)
        c = self.context_features
        m_in = deg_in[:, None] <= deg_h[None, :]
        if c:
            m_in = np.vstack([m_in, np.ones((c, self.width), dtype=bool)])
        m_block = deg_h[:, None] <= deg_h[None, :]
        self.masks = {"in_w": m_in.astype(self.dtype), "out_w": (deg_h[:, None] < out_degrees[None, :]).astype(self.dtype)}
        for k in range(self.blocks):
            self.masks[f"block{k}_w0"] = self.masks[f"block{k}_w1"] = m_block.astype(self.dtype)
        rng = self._build(rng, init, zero_last, self.features + c)
        for key, mask in self.masks.items():
            self.params[key] *= mask
        if c:
            wc, _ = dense_layer(rng, self.activation, c, self.out_features, self.dtype, self.init)
            self.params["wc"] = np.zeros_like(wc) if zero_last else wc

    def _weights(self):
        return {key: self.params[key] * mask for key, mask in self.masks.items()}

    def _finish_grads(self, grads):
        for key, mask in self.masks.items():
            grads[key] *= mask
        return grads

    def __repr__(self):
        return super().__repr__()[:-1] + f", order={self.order.tolist()})"
