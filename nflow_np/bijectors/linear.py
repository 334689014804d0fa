"""Linear vector bijectors: permutations, a plane rotation, triangular and low-rank-updated scales.

Every map here is ``y = S x + shift`` with a matrix ``S`` that does not depend
on ``x``, so the log-det is one constant, log|det S|, for every vector of a
batch, and the backward passes are matrix products. Vectors are the rows of
the input (shape ``(..., d)``), so ``S x`` is computed as ``x @ S.T``.
"""

import numpy as np

from .._validation import as_float_array, check_event_shape, check_finite, resolve_dtype
from .base import PassBijector


def _param(value, dtype, where, name):
    """A private float copy of a parameter in ``dtype`` (Python numbers and lists take ``dtype``)."""
    return np.array(as_float_array(value, dtype, where, name), dtype=dtype, copy=True)


def _solve_triangular(matrix, b, *, lower, unit_diagonal=False):
    """Solve ``matrix @ z = b`` for ``z`` along the last axis of ``b`` by substitution.

    Only the triangle named by ``lower`` is read (and not the diagonal when
    ``unit_diagonal``). Substitution is backward stable, costs O(d^2) per
    right-hand side and needs no SciPy; the loop runs over coordinates, each
    step updating one contiguous row for the whole batch.
    """
    d = matrix.shape[0]
    rows = b.reshape(-1, d).T.copy()
    order = range(d) if lower else range(d - 1, -1, -1)
    for i in order:
        if lower:
            rows[i] -= matrix[i, :i] @ rows[:i]
        else:
            rows[i] -= matrix[i, i + 1:] @ rows[i + 1:]
        if not unit_diagonal:
            rows[i] /= matrix[i, i]
    return rows.T.reshape(b.shape)


def _solve_tril(tril, b, *, transpose=False):
    """Solve ``L z = b`` (or ``L^T z = b``) with ``L`` lower triangular; its upper part is never read."""
    if transpose:
        return _solve_triangular(tril.T, b, lower=False)
    return _solve_triangular(tril, b, lower=True)


class _VectorBijector(PassBijector):
    """Base of the bijectors of this module: ``event_ndims = 1``, with an optional fixed size."""

    event_ndims = 1
    event_size = None

    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.event_size, where, argname)

    def _check(self, arr, method, argname):
        # A Chain calls the private passes directly, after checking only its
        # own input: checking here names the member whose size does not fit.
        self._check_input_shape(arr, f"{self.name}.{method}", argname)

    @staticmethod
    def _constant_log_det(value, like):
        return np.full(like.shape[:-1], value, dtype=like.dtype)


class _VolumePreserving(_VectorBijector):
    """Maps with log|det| = 0 everywhere; subclasses define ``_forward`` and ``_inverse``."""

    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        return self._constant_log_det(0.0, x)

    def _inverse_log_det(self, y):
        self._check(y, "inverse_log_det_jacobian", "y")
        return self._constant_log_det(0.0, y)

    def _forward_and_log_det(self, x):
        y = self._forward(x)
        return y, self._constant_log_det(0.0, y)

    def _inverse_and_log_det(self, y):
        x = self._inverse(y)
        return x, self._constant_log_det(0.0, x)


class Permute(_VolumePreserving):
    """Reorder the coordinates of each vector: ``y = x[..., permutation]``.

    ``y_i = x_{p(i)}`` and ``x = y[..., argsort(p)]``. The Jacobian is a
    permutation matrix, so log|det| = 0. Placed between coupling layers so that
    every coordinate is eventually transformed.

    Parameters
    ----------
    permutation : array_like of int, shape (d,)
        A permutation of ``0, ..., d - 1``. Not trainable: kept as the
        read-only attribute ``permutation``, not in ``params``.
    name : str, optional

    References
    ----------
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(self, permutation, *, name=None):
        super().__init__(name=name)
        try:
            perm = np.array(permutation)
        except (ValueError, TypeError):
            raise TypeError(f"{self.name}: permutation must be a 1-D array of ints; got {permutation!r}") from None
        if perm.ndim != 1 or perm.size == 0:
            raise ValueError(f"{self.name}: permutation must be a non-empty 1-D array; got shape {perm.shape}")
        if perm.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: permutation must hold ints; got dtype {perm.dtype}")
        if not np.array_equal(np.sort(perm), np.arange(perm.size)):
            raise ValueError(f"{self.name}: permutation must hold each of 0..{perm.size - 1} exactly once; "
                             f"got {perm.tolist()}")
        self.permutation = perm.astype(np.intp)
        self.permutation.setflags(write=False)
        self._inverse_permutation = np.argsort(self.permutation)
        self.event_size = perm.size

    def _forward(self, x):
        self._check(x, "forward", "x")
        return x[..., self.permutation]

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        return y[..., self._inverse_permutation]

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return grad_y[..., self._inverse_permutation], {}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return grad_x[..., self.permutation], {}

    def __repr__(self):
        return f"{self.name}({self.permutation.tolist()})"

    def lower(self, d):
        from ..kernels.specs import PermutationSpec, Unsupported
        if self.permutation.size != d:
            raise Unsupported(f"{self.name} acts on {self.permutation.size} coordinates, the flow on {d}")
        return PermutationSpec(density=self._inverse_permutation, sampling=self.permutation)


class Reverse(_VolumePreserving):
    """Reverse the coordinates of each vector: ``y = x[..., ::-1]``, its own inverse.

    log|det| = 0. Works for any size ``d``; no parameters.

    References
    ----------
    Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", ICLR 2015 workshop.
    """

    def _forward(self, x):
        self._check(x, "forward", "x")
        return x[..., ::-1].copy()   # a copy, so that no caller writes through a view of its input

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        return y[..., ::-1].copy()

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        return grad_y[..., ::-1].copy(), {}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        return grad_x[..., ::-1].copy(), {}

    def lower(self, d):
        from ..kernels.specs import PermutationSpec
        order = np.arange(d)[::-1]
        return PermutationSpec(density=order, sampling=order)


class Rotation(_VolumePreserving):
    """Rotation of the plane by a trainable angle ``theta``.

    ``y0 = cos(theta) x0 - sin(theta) x1``, ``y1 = sin(theta) x0 + cos(theta) x1``;
    the inverse rotates by ``-theta``. log|det| = 0. Since
    ``dy/dtheta = (-y1, y0)``, the gradient of ``theta`` is
    ``sum(grad_y1 * y0 - grad_y0 * y1)``; on the inverse pass
    ``dx/dtheta = (x1, -x0)``.

    Two dimensions only. In ``d`` dimensions, :class:`~nflow_np.bijectors.RandomRotation`
    is a fixed random rotation and :class:`~nflow_np.bijectors.Householder`
    a trainable orthogonal map (a product of reflections).

    Parameters
    ----------
    theta : float
        The angle in radians (parameter ``"theta"``, shape ``()``).
    dtype : dtype, optional
        float64 unless ``theta`` is a float32 array or ``dtype`` says otherwise.
    name : str, optional
    """

    event_size = 2

    def __init__(self, theta, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, theta, where=type(self).__name__), name=name)
        theta = _param(theta, self.dtype, f"{self.name}.__init__", "theta")
        if theta.ndim != 0:
            raise ValueError(f"{self.name}: theta must be a scalar angle; got shape {theta.shape}")
        self.params["theta"] = theta

    def _cos_sin(self, method):
        theta = self.params["theta"]
        check_finite(theta, f"{self.name}.{method}", "theta")
        return np.cos(theta), np.sin(theta)

    def _forward(self, x):
        self._check(x, "forward", "x")
        c, s = self._cos_sin("forward")
        return np.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], axis=-1)

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        c, s = self._cos_sin("inverse")
        return np.stack([c * y[..., 0] + s * y[..., 1], -s * y[..., 0] + c * y[..., 1]], axis=-1)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, y = ctx
        c, s = self._cos_sin("forward_vjp")
        grad_x = np.stack([c * grad_y[..., 0] + s * grad_y[..., 1],
                           -s * grad_y[..., 0] + c * grad_y[..., 1]], axis=-1)
        grad_theta = (grad_y[..., 1] * y[..., 0] - grad_y[..., 0] * y[..., 1]).sum()
        return grad_x, {"theta": np.asarray(grad_theta, dtype=self.dtype)}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, y = ctx
        c, s = self._cos_sin("inverse_vjp")
        grad_y = np.stack([c * grad_x[..., 0] - s * grad_x[..., 1],
                           s * grad_x[..., 0] + c * grad_x[..., 1]], axis=-1)
        grad_theta = (grad_x[..., 0] * x[..., 1] - grad_x[..., 1] * x[..., 0]).sum()
        return grad_y, {"theta": np.asarray(grad_theta, dtype=self.dtype)}


class ScaleMatvecTriL(_VectorBijector):
    """``y = L x`` with ``L`` lower triangular and a non-zero diagonal.

    log|det| = ``sum_i log|L_ii|``; the inverse solves ``L x = y`` by forward
    substitution. Only the lower triangle (diagonal included) of the given
    matrix is used; the strict upper triangle is ignored and its gradient is
    zero. Gradients: ``dL = tril(sum_batch grad_y x^T) + sum(grad_log_det) diag(1 / L_ii)``
    forward; inverse, with ``grad_y = L^-T grad_x``,
    ``dL = -tril(sum_batch grad_y x^T) - sum(grad_log_det) diag(1 / L_ii)``.

    Parameters
    ----------
    scale_tril : array_like, shape (d, d)
        Parameter ``"scale_tril"``. A matrix singular at working precision is
        refused, here and at every call: a diagonal entry that is zero,
        subnormal, or smaller than ``d * eps * max |L_ij|`` (``1e-300`` next to
        entries of order 1, say), whose inverse overflows.
    dtype : dtype, optional
    name : str, optional

    References
    ----------
    Papamakarios et al., "Normalizing Flows for Probabilistic Modeling and Inference",
    JMLR 22(57), 2021, section 3.1 (linear flows).
    """

    def __init__(self, scale_tril, *, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, scale_tril, where=type(self).__name__), name=name)
        scale_tril = _param(scale_tril, self.dtype, f"{self.name}.__init__", "scale_tril")
        if scale_tril.ndim != 2 or scale_tril.shape[0] != scale_tril.shape[1] or scale_tril.shape[0] == 0:
            raise ValueError(f"{self.name}: scale_tril must be a square (d, d) matrix with d >= 1; "
                             f"got shape {scale_tril.shape}")
        self.params["scale_tril"] = scale_tril
        self.event_size = scale_tril.shape[0]
        self._matrix(None)

    def _matrix(self, method):
        where = self.name if method is None else f"{self.name}.{method}"
        tril = self.params["scale_tril"]
        check_finite(tril, where, "scale_tril")
        lower = np.tril(tril)
        diag = np.abs(np.diagonal(lower))
        # Substitution divides by the diagonal: an entry that is zero, subnormal, or below the rounding
        # error of the largest entry (d * eps * max |L_ij|) makes the map singular at working precision
        # (the inverse overflows, then mixes infinities into NaN).
        info = np.finfo(lower.dtype)
        floor = max(float(info.tiny), lower.shape[0] * float(info.eps) * float(np.abs(lower).max()))
        if np.any(diag < floor):
            i = int(np.argmin(diag))
            raise ValueError(f"{where}: the diagonal of scale_tril must be non-zero and not negligible (the map "
                             f"is singular at {lower.dtype} precision otherwise); got {float(tril[i, i])!r} at "
                             f"index {i}, below {floor:.3g} (d * eps * max |entry|, and at least the smallest normal "
                             f"number)")
        return lower

    def _log_det(self, tril):
        return np.log(np.abs(np.diagonal(tril))).sum()

    def _forward(self, x):
        self._check(x, "forward", "x")
        return x @ self._matrix("forward").T

    def _inverse(self, y):
        self._check(y, "inverse", "y")
        return _solve_tril(self._matrix("inverse"), y)

    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        return self._constant_log_det(self._log_det(self._matrix("forward_log_det_jacobian")), x)

    def _inverse_log_det(self, y):
        self._check(y, "inverse_log_det_jacobian", "y")
        return self._constant_log_det(-self._log_det(self._matrix("inverse_log_det_jacobian")), y)

    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        tril = self._matrix("forward")
        y = x @ tril.T
        return y, self._constant_log_det(self._log_det(tril), y), (x, tril)

    def _inverse_pass(self, y):
        self._check(y, "inverse", "y")
        tril = self._matrix("inverse")
        x = _solve_tril(tril, y)
        return x, self._constant_log_det(-self._log_det(tril), x), (x, tril)

    def _tril_grad(self, tril, left, right, log_det_weight):
        d = tril.shape[0]
        grad = np.tril(left.reshape(-1, d).T @ right.reshape(-1, d))
        grad[np.diag_indices(d)] += log_det_weight / np.diagonal(tril)
        return grad

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, tril = ctx
        grad = self._tril_grad(tril, grad_y, x, grad_log_det.sum())
        return grad_y @ tril, {"scale_tril": grad}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, tril = ctx
        grad_y = _solve_tril(tril, grad_x, transpose=True)
        grad = self._tril_grad(tril, -grad_y, x, -grad_log_det.sum())
        return grad_y, {"scale_tril": grad}
