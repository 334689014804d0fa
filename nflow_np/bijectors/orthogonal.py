"""Orthogonal maps of ``R^d``: trainable Householder reflections and a fixed random rotation.

Both preserve volume (log|det| = 0) and invert by the transpose. The planar
rotation by a trainable angle is :class:`~nflow_np.bijectors.Rotation`.
"""

import numpy as np

from .._validation import as_float_array, as_generator, check_finite, resolve_dtype
from .linear import _VolumePreserving
from .planar import check_size


class Householder(_VolumePreserving):
    """A product of trainable Householder reflections ``H_v = I - 2 v v^T / |v|^2``.

    forward ``y = H_{v_k} ... H_{v_2} H_{v_1} x`` (``v_1`` applied first),
    inverse the same reflections in reverse order (each is its own inverse);
    orthogonal, so log|det| = 0. ``d`` reflections reach every orthogonal
    matrix of determinant ``(-1)^d``.

    Gradients of one reflection ``y = x - 2 (x . v) v / |v|^2`` with upstream
    ``g``: ``grad_x = H_v g`` and, with ``a = x . v``, ``c = g . v``,
    ``n = |v|^2``, ``grad_v = -2 (c x + a g) / n + 4 a c v / n^2`` summed over
    the batch.

    Parameters
    ----------
    dim : int
        The event size ``d``.
    n_reflections : int, optional
        The number ``k`` of reflections; ``d`` by default.
    rng : Generator or int, optional
        The vectors are drawn from N(0, 1).
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    Attributes
    ----------
    params : {"vectors"}
        Shape ``(k, d)``: row ``i`` is ``v_{i+1}``. Every row must stay non-zero.
    matrix : ndarray, shape (d, d)
        The orthogonal matrix of the forward map (a fresh array, for inspection).

    References
    ----------
    Tomczak & Welling, "Improving Variational Auto-Encoders using Householder Flow", NeurIPS 2016 workshop on
    Bayesian deep learning (arXiv:1611.09630).
    """

    def __init__(self, dim, *, n_reflections=None, rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        where = f"{self.name}.__init__"
        d = self.event_size = check_size(dim, where, "dim")
        k = d if n_reflections is None else check_size(n_reflections, where, "n_reflections")
        self.params["vectors"] = as_generator(rng).normal(size=(k, d)).astype(self.dtype)

    @property
    def n_reflections(self):
        return self.params["vectors"].shape[0]

    def _reflections(self, method):
        """``(vectors, 2 / |v|^2, |v|^2)`` per row,, checked finite and non-zero."""
        where = f"{self.name}.{method}"
        v = self.params["vectors"]
        check_finite(v, where, "vectors")
        n2 = (v.astype(np.float64) ** 2).sum(axis=1)
        bad = ~(n2 > np.finfo(v.dtype).tiny)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: every row of vectors must be non-zero (a reflection divides by |v|^2); "
                             f"row {i} has |v|^2 = {float(n2[i])!r}")
        return v, (2.0 / n2).astype(v.dtype), n2.astype(v.dtype)

    @staticmethod
    def _reflect(x, v, scale):
        return x - (scale * (x @ v))[..., None] * v

    def _apply(self, x, method, order):
        v, scale, _ = self._reflections(method)
        for i in order:
            x = self._reflect(x, v[i], scale[i])
        return x

    def _forward(self, x):
        self._check(x, "forward", "x")
        return self._apply(x, "forward", range(self.n_reflections))

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        return self._apply(y, "inverse", range(self.n_reflections - 1, -1, -1))

    @property
    def matrix(self):
        d = self.event_size
        return self._apply(np.eye(d, dtype=self.dtype), "matrix", range(self.n_reflections)).T

    def _pass(self, x, method, order):
        self._check(x, method, "x" if method == "forward" else "y")
        v, scale, _ = self._reflections(method)
        inputs = []
        for i in order:
            inputs.append(x)
            x = self._reflect(x, v[i], scale[i])
        return x, self._constant_log_det(0.0, x), (order, inputs)

    def _backward(self, ctx, grad, method):
        order, inputs = ctx
        v, scale, norms = self._reflections(method)
        d = self.event_size
        grad_v = np.zeros_like(v)
        for i, x in zip(reversed(order), reversed(inputs)):
            vi, n = v[i], norms[i]
            a = (x @ vi).reshape(-1)
            c = (grad @ vi).reshape(-1)
            xs, gs = x.reshape(-1, d), grad.reshape(-1, d)
            grad_v[i] += -2.0 * (c @ xs + a @ gs) / n + 4.0 * (a @ c) * vi / (n * n)
            grad = self._reflect(grad, vi, scale[i])
        return grad, {"vectors": grad_v}

    def _forward_pass(self, x):
        return self._pass(x, "forward", list(range(self.n_reflections)))

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return self._backward(ctx, grad_y, "forward_vjp")

    def _inverse_pass(self, y):
        return self._pass(y, "inverse", list(range(self.n_reflections - 1, -1, -1)))

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return self._backward(ctx, grad_x, "inverse_vjp")


def haar_rotation(dim, rng):
    """A rotation matrix (orthogonal, det +1) drawn uniformly (Haar measure on SO(dim)), in float64.

    QR of a standard Gaussian matrix, each column of ``Q`` multiplied by the
    sign of ``R``'s matching diagonal entry (which makes ``Q`` Haar on O(d)),
    then the first column negated if the determinant is -1 (which maps Haar
    on O(d) to Haar on SO(d)).
    """
    g = as_generator(rng).normal(size=(dim, dim))
    q, r = np.linalg.qr(g)
    signs = np.sign(np.diagonal(r))
    signs[signs == 0] = 1.0
    q = q * signs
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class RandomRotation(_VolumePreserving):
    """A fixed rotation of ``R^d`` drawn uniformly at random: ``y = Q x``, ``x = Q^T y``.

    ``Q`` is orthogonal with det +1, drawn from the Haar measure on SO(d)
    (see :func:`haar_rotation`), so log|det| = 0 exactly. Not trainable:
    ``params`` is empty and ``Q`` is the read-only attribute ``matrix``. Placed
    between layers that act on coordinates separately (couplings, elementwise
    maps) it mixes all coordinates, not only reorders them. For the plane,
    :class:`~nflow_np.bijectors.Rotation` rotates by a trainable angle.

    Parameters
    ----------
    dim : int
        The event size ``d``.
    rng : Generator or int, optional
        Draws ``Q``.
    matrix : array_like, shape (d, d), optional
        Use this rotation instead of drawing one; it must be orthogonal to
        rounding (``|Q^T Q - I| <= 100 d eps``) with det +1.
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    References
    ----------
    Mezzadri, "How to generate random matrices from the classical compact groups",
    Notices of the AMS 54(5), 2007.
    """

    def __init__(self, dim, *, rng=None, matrix=None, dtype=np.float64, name=None):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        where = f"{self.name}.__init__"
        d = self.event_size = check_size(dim, where, "dim")
        if matrix is None:
            q = haar_rotation(d, rng).astype(self.dtype)
        else:
            q = np.array(as_float_array(matrix, None, where, "matrix"), dtype=self.dtype)
            if q.shape != (d, d):
                raise ValueError(f"{where}: matrix must have shape ({d}, {d}); got {q.shape}")
            q64 = q.astype(np.float64)
            err = float(np.abs(q64.T @ q64 - np.eye(d)).max())
            tol = 100.0 * d * float(np.finfo(self.dtype).eps)
            if err > tol:
                raise ValueError(f"{where}: matrix must be orthogonal; max |Q^T Q - I| = {err:.3g} > {tol:.3g}")
            if np.linalg.det(q64) < 0:
                raise ValueError(f"{where}: matrix must be a rotation (det +1); got a reflection (det -1)")
        q.setflags(write=False)
        self.matrix = q

    def _forward(self, x):
        self._check(x, "forward", "x")
        return x @ self.matrix.T

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        return y @ self.matrix

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return grad_y @ self.matrix, {}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return grad_x @ self.matrix.T, {}

    def __repr__(self):
        return f"{self.name}(dim={self.event_size})"
