"""Block neural autoregressive layers (BNAF): one monotone, triangular network as the whole bijector."""

import numpy as np

from .._validation import as_generator, check_event_shape
from ._roots import bracketed_newton
from .autoregressive import autoregressive_forward_backward
from .base import Bijector

__all__ = ["BlockNeuralAutoregressive"]


def _logsumexp(a):
    top = a.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=-1, keepdims=True)))[..., 0]


def _sech2(z):
    """``sech(z)^2 = 4 e / (1 + e)^2``, ``e = exp(-2 |z|)``: accurate in the tails, where ``1 - tanh^2`` is 0."""
    e = np.exp(-2.0 * np.abs(z))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


class BlockNeuralAutoregressive(Bijector):
    """BNAF: a masked network whose block-triangular weights make it an autoregressive, monotone map.

    The density direction (data ``y`` to base ``x``, both ``d``-vectors) is the network::

        h_0 = y,   h_l = act(W_l h_{l-1} + b_l)  (l = 1..L-1),   x = W_L h_{L-1} + b_L

    with hidden widths ``d * hidden_factor``. ``W_l`` is made of ``d x d`` blocks: block
    ``(i, k)`` is zero for ``k > i``, free for ``k < i``, and ``exp`` of its raw values on the
    diagonal (positive), so ``x_i`` depends on ``y_<=i`` and increases in ``y_i``. The
    activation is a leaky tanh, ``act(z) = tanh(z) + leak z``: the paper's tanh bounds
    the range of each ``x_i``, which leaves the sampling direction without a solution
    outside it; the leak (``leak > 0``) makes every layer a bijection of the real line.

    The log-det is the sum of the log-diagonal of the triangular Jacobian, accumulated
    through the layers from the diagonal blocks alone: with ``g_l`` the log of the
    (positive) Jacobian block ``dh_l[i] / dy_i``,
    ``g_l = log act'(z_l) + logsumexp_k(raw_l[i, :, k] + g_{l-1}[k])`` (``g_0 = 0``; no
    activation term in the last layer), and ``log|det| = sum_i g_L[i]``.

    The sampling direction has no closed form: coordinates are solved one after the
    other (the Jacobian is triangular), each by a bracketed Newton iteration with
    bisection fallback, vectorized over the batch
    (:func:`~nflow_np.bijectors._roots.bracketed_newton`). With ``t`` the unknown, the
    map from ``y_i`` to ``x_i`` has slope between ``leak^(L-1) P`` and ``(1 + leak)^(L-1) P``,
    ``P`` the product of the diagonal blocks, which brackets the root. Its VJP follows
    from the implicit function theorem: with ``g`` the density map at ``y = g^-1(x)``,
    the input gradient solves ``J_g^T w = v`` (triangular, so exact after ``d`` sweeps) and
    the parameters' gradient is ``-(dg/dtheta)^T w`` (plus the log-det's own terms).

    Parameters
    ----------
    features : int
        ``d``.
    hidden_factor : int, default 8
        Hidden units per coordinate (the blocks' size).
    hidden_layers : int, default 2
        ``L - 1``, the activated layers.
    leak : float, default 0.01
        The linear part of the activation, ``> 0``.
    rng : Generator or int, optional
    dtype : float64 (default) or float32

    References: De Cao, Aziz and Titov, "Block Neural Autoregressive Flow", UAI 2019.
    """

    event_ndims = 1
    #: the first layer starts dividing by SPREAD, the last multiplying by it (see __init__)
    SPREAD = 10.0

    def __init__(self, features, hidden_factor=8, hidden_layers=2, *, leak=0.01, rng=None, dtype=np.float64,
                 name=None):
        super().__init__(dtype=np.dtype(dtype), name=name)
        for label, value, low in (("features", features, 1), ("hidden_factor", hidden_factor, 1),
                                  ("hidden_layers", hidden_layers, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{self.name}: {label} must be an int >= {low}; got {value!r}")
        if not (isinstance(leak, (int, float, np.floating)) and not isinstance(leak, bool) and 0.0 < leak <= 1.0):
            raise ValueError(f"{self.name}: leak must be a float in (0, 1]; got {leak!r}")
        self.features = d = int(features)
        self.hidden_factor = int(hidden_factor)
        self.hidden_layers = int(hidden_layers)
        self.leak = float(leak)
        self._blocks = [1] + [self.hidden_factor] * self.hidden_layers + [1]
        rng = as_generator(rng)
        self._lower, self._diag = [], []
        for layer, (a_in, a_out) in enumerate(zip(self._blocks[:-1], self._blocks[1:])):
            row = np.repeat(np.arange(d), a_out)[:, None]
            col = np.repeat(np.arange(d), a_in)[None, :]
            self._lower.append(col < row)
            self._diag.append(col == row)
            fan_in = np.maximum(1, (col <= row).sum(axis=1, keepdims=True))
            bound = 0.3 / np.sqrt(fan_in)
            raw = rng.uniform(-1.0, 1.0, (d * a_out, d * a_in)) * bound
            # diagonal blocks: each row sums to 1 (a unit starts at the mean of its block's inputs; from a single
            # input, a gain within 30% of 1), except that the first layer divides by SPREAD and the last multiplies
            # back: standardized data start in the activation's near-linear range, and the layer near the identity
            noise = 0.3 * rng.uniform(-1.0, 1.0, (d * a_out, a_in))
            if a_in > 1:
                noise -= np.log(np.exp(noise).sum(axis=1, keepdims=True))
            if layer == 0:
                noise -= np.log(self.SPREAD)
            if layer == len(self._blocks) - 2:
                noise += np.log(self.SPREAD)
            raw[self._diag[-1]] = noise.ravel()
            self.params[f"w{layer}"] = (raw * (self._lower[-1] | self._diag[-1])).astype(self.dtype)
            self.params[f"b{layer}"] = np.zeros(d * a_out, dtype=self.dtype)

    @property
    def n_layers(self):
        return len(self._blocks) - 1

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _weights(self, layer):
        """``(W, log of the diagonal blocks (d, a_out, a_in))`` of ``layer`` from its raw parameters."""
        raw = self.params[f"w{layer}"]
        a_in, a_out = self._blocks[layer], self._blocks[layer + 1]
        log_diag = raw[self._diag[layer]].reshape(self.features, a_out, a_in)
        w = np.where(self._lower[layer], raw, 0.0).astype(raw.dtype)
        w[self._diag[layer]] = np.exp(log_diag).ravel()
        return w, log_diag

    def _activate(self, z):
        """``(act(z), act'(z), log act'(z), d log act'(z) / dz)``."""
        t = np.tanh(z)
        s2 = _sech2(z)
        slope = s2 + self.leak
        return t + self.leak * z, slope, np.log(slope), -2.0 * t * s2 / slope

    # ---- the density direction: the network
    def _inverse_pass(self, y):
        check_event_shape(y, 1, self.features, f"{self.name}.inverse", "y")
        batch, d = y.shape[:-1], self.features
        h = y.reshape(-1, d)
        log_jac = np.zeros((h.shape[0], d, 1), dtype=y.dtype)
        caches = []
        for layer in range(self.n_layers):
            w, log_diag = self._weights(layer)
            z = h @ w.T + self.params[f"b{layer}"]
            terms = log_diag[None] + log_jac[:, :, None, :]          # (n, d, a_out, a_in)
            acc = _logsumexp(terms)
            share = np.exp(terms - acc[..., None])
            if layer < self.n_layers - 1:
                out, slope, log_slope, dlog_slope = self._activate(z)
                log_jac = log_slope.reshape(acc.shape) + acc
                caches.append((h, w, share, slope, dlog_slope))
            else:
                out, log_jac = z, acc
                caches.append((h, w, share, None, None))
            h = out
        per_coordinate = log_jac[..., 0]
        x = h.reshape(batch + (d,))
        return x, per_coordinate.sum(axis=-1).reshape(batch), (caches, per_coordinate, batch)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        caches, per_coordinate, batch = ctx
        d = self.features
        grad_h = grad_x.reshape(-1, d)
        grad_log_jac = np.broadcast_to(np.reshape(grad_log_det, (-1, 1, 1)), per_coordinate.shape + (1,))
        grads = {}
        for layer in reversed(range(self.n_layers)):
            h, w, share, slope, dlog_slope = caches[layer]
            # through the log-sum-exp: the diagonal blocks' raw values and the previous log-Jacobian
            weighted = grad_log_jac[..., None] * share               # (n, d, a_out, a_in)
            grad_log_diag = weighted.sum(axis=0)
            if slope is None:
                grad_z = grad_h
            else:
                grad_z = grad_h * slope + grad_log_jac.reshape(grad_h.shape) * dlog_slope
            grad_log_jac = weighted.sum(axis=2)
            grad_w = grad_z.T @ h
            raw_grad = np.where(self._lower[layer], grad_w, 0.0)
            raw_grad[self._diag[layer]] = (grad_w[self._diag[layer]] * w[self._diag[layer]]
                                           + grad_log_diag.ravel())
            grads[f"w{layer}"] = raw_grad.astype(grad_h.dtype)
            grads[f"b{layer}"] = grad_z.sum(axis=0)
            grad_h = grad_z @ w
        return grad_h.reshape(batch + (d,)), grads

    def _inverse(self, y):
        return self._inverse_pass(y)[0]

    def _inverse_and_log_det(self, y):
        return self._inverse_pass(y)[:2]

    # ---- the sampling direction: d scalar solves
    def _forward(self, x):
        check_event_shape(x, 1, self.features, f"{self.name}.forward", "x")
        batch, d, L = x.shape[:-1], self.features, self.n_layers
        target_all = x.reshape(-1, d)
        n = target_all.shape[0]
        weights = [self._weights(layer) for layer in range(L)]
        # the layers' values, filled block by block as the coordinates are solved
        values = [np.zeros((n, d * a), dtype=x.dtype) for a in self._blocks]
        low_slope = self.leak ** (L - 1)
        high_slope = (1.0 + self.leak) ** (L - 1)
        for i in range(d):
            # each layer's input to block i from the blocks before it (final by now), and the diagonal block
            offsets, diag = [], []
            for layer, (w, log_diag) in enumerate(weights):
                a_in, a_out = self._blocks[layer], self._blocks[layer + 1]
                rows = slice(i * a_out, (i + 1) * a_out)
                offsets.append(values[layer][:, :i * a_in] @ w[rows, :i * a_in].T + self.params[f"b{layer}"][rows])
                diag.append(np.exp(log_diag[i]))
            product = diag[0]
            for block in diag[1:]:
                product = block @ product
            product = float(product[0, 0])

            def run(t, active=None, keep=False):
                h, dh = t[:, None], np.ones((t.size, 1), dtype=x.dtype)
                kept = []
                for layer in range(L):
                    z = offsets[layer] + h @ diag[layer].T
                    dh = dh @ diag[layer].T
                    if layer < L - 1:
                        h, slope = self._activate(z)[:2]
                        dh = dh * slope
                    else:
                        h = z
                    kept.append(h)
                return (kept if keep else (h[:, 0], dh[:, 0]))

            target = target_all[:, i]
            f0, slope0 = run(np.zeros(n, dtype=x.dtype))
            gap = target - f0
            near, far = gap / (high_slope * product), gap / (low_slope * product)
            lo, hi = np.minimum(near, far), np.maximum(near, far)
            t = bracketed_newton(run, target, lo.astype(x.dtype), hi.astype(x.dtype), gap / slope0)
            for layer, h in enumerate(run(t, keep=True)):
                a_out = self._blocks[layer + 1]
                values[layer + 1][:, i * a_out:(i + 1) * a_out] = h
            values[0][:, i] = t
        return values[0].reshape(batch + (d,))

    def _forward_and_log_det(self, x):
        y = self._forward(x)
        return y, -self._inverse_pass(y)[1]

    def _forward_pass(self, x):
        y = self._forward(x)
        _, log_det, ctx = self._inverse_pass(y)
        return y, -log_det, ctx

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        caches, per_coordinate, batch = ctx
        inverse_diagonal = np.exp(-per_coordinate).reshape(batch + (self.features,))
        return autoregressive_forward_backward(self, ctx, grad_y, grad_log_det, inverse_diagonal)
