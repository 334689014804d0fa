"""``Affine``: a shift plus a scale matrix with a low-rank update (TFP's classic Affine bijector).

The scale is ``S = A + V diag(d) V^T`` with ``A`` diagonal-plus-lower-triangular;
its log-det goes through the matrix determinant lemma and its inverse through
the Woodbury identity, so neither needs a dense determinant or inverse.
"""

import numpy as np

from .._validation import check_finite, resolve_dtype
from .linear import _param, _solve_tril, _VectorBijector


class _LowRankUpdate:
    """``S = A + V diag(d) V^T`` at one set of parameter values, with what its solves reuse.

    ``A`` is lower triangular (dense ``tril``) or diagonal (``tril`` None); its
    diagonal is ``a``. With ``U = A^-1 V`` and the capacitance
    ``C = I_r + diag(d) V^T U``:
    ``log|det S| = sum log|a| + log|det C|`` (matrix determinant lemma) and
    ``S^-1 = A^-1 - U C^-1 diag(d) V^T A^-1`` (Woodbury).
    """

    def __init__(self, a, tril, factor, diag):
        self.a, self.tril, self.V, self.d = a, tril, factor, diag
        self.log_det = np.log(np.abs(a)).sum()
        if factor is not None:
            self.U = self.a_solve(factor.T).T
            self.M = factor.T @ self.U
            capacitance = np.eye(factor.shape[1], dtype=a.dtype) + diag[:, None] * self.M
            sign, log_det_c = np.linalg.slogdet(capacitance)
            if sign == 0 or not np.isfinite(log_det_c):
                self.log_det = -np.inf   # let the caller refuse it; inv() would raise LinAlgError
                return
            self.C_inv = np.linalg.inv(capacitance)   # r x r, r small
            self.log_det = self.log_det + log_det_c

    def a_solve(self, b, transpose=False):
        return b / self.a if self.tril is None else _solve_tril(self.tril, b, transpose=transpose)

    def matvec(self, x):
        out = x * self.a if self.tril is None else x @ self.tril.T
        if self.V is not None:
            out += ((x @ self.V) * self.d) @ self.V.T
        return out

    def rmatvec(self, g):
        out = g * self.a if self.tril is None else g @ self.tril
        if self.V is not None:
            out += ((g @ self.V) * self.d) @ self.V.T
        return out

    def _woodbury(self, y):
        w = self.a_solve(y)
        if self.V is not None:
            w -= (((w @ self.V) * self.d) @ self.C_inv.T) @ self.U.T
        return w

    def _woodbury_transposed(self, g):
        if self.V is not None:
            g = g - (((g @ self.U) @ self.C_inv) * self.d) @ self.V.T
        return self.a_solve(g, transpose=True)

    # Woodbury's error grows with the conditioning of A, not of S; one step of
    # iterative refinement brings the solve back to what S's conditioning allows.
    def solve(self, y):
        if self.V is None:
            return self._woodbury(y)
        w = self._woodbury(y)
        return w + self._woodbury(y - self.matvec(w))

    def solve_transposed(self, g):
        if self.V is None:
            return self._woodbury_transposed(g)
        w = self._woodbury_transposed(g)
        return w + self._woodbury_transposed(g - self.rmatvec(w))


class Affine(_VectorBijector):
    """``y = S x + shift`` with ``S = A + V diag(d) V^T`` (TensorFlow Probability's ``Affine``).

    ``A = diag(scale_diag) + tril(scale_tril)`` (each term only when given, the
    identity when neither is), ``V = scale_perturb_factor`` of shape (D, r),
    ``d = scale_perturb_diag`` (ones when ``V`` is given without it).

    With ``U = A^-1 V`` (a triangular solve) and ``C = I_r + diag(d) V^T U``:

    - log|det S| = ``sum_i log|A_ii| + log|det C|`` (matrix determinant lemma),
      O(D^2 r + r^3), never a dense D x D determinant;
    - inverse (Woodbury): ``w = A^-1 (y - shift)``, ``x = w - U C^-1 diag(d) V^T w``.

    Gradients, with ``G = dL/dS``: forward ``G = sum_batch grad_y x^T +
    sum(grad_log_det) S^-T``; inverse (``x = S^-1 (y - shift)``, log-det
    ``-log|det S|``) ``grad_y = S^-T grad_x``, ``G = -sum_batch grad_y x^T -
    sum(grad_log_det) S^-T`` and ``dL/dshift = -sum_batch grad_y``. Then
    ``dL/dscale_diag = diag(G)``, ``dL/dscale_tril = tril(G)``,
    ``dL/dV = (G + G^T) V diag(d)``, ``dL/dd = diag(V^T G V)``. The ``S^-T``
    terms use ``S^-1 V = U C^-1`` and ``S^-T = A^-T - A^-T V diag(d) C^-T U^T``,
    so no dense inverse is formed either.

    Parameters
    ----------
    shift : array_like, shape (D,), optional
    scale_diag : array_like, shape (D,), optional
    scale_tril : array_like, shape (D, D), optional
        Only its lower triangle is used; the rest gets zero gradient.
    scale_perturb_factor : array_like, shape (D, r), optional
    scale_perturb_diag : array_like, shape (r,), optional
        Requires ``scale_perturb_factor``.
    dtype : dtype, optional
    name : str, optional

    Every argument given is a trainable parameter under its own name; at least
    one of them fixes D. ``A`` must have a non-zero diagonal (the determinant
    lemma and Woodbury need ``A^-1``) and ``S`` must be non-singular: both are
    checked here and at every call.

    References
    ----------
    Dillon et al., "TensorFlow Distributions", arXiv:1711.10604, 2017.
    Woodbury, "Inverting modified matrices", Memorandum Report 42, Statistical
    Research Group, Princeton University, 1950.
    """

    _SHAPES = {"shift": (1, "(D,)"), "scale_diag": (1, "(D,)"), "scale_tril": (2, "(D, D)"),
               "scale_perturb_factor": (2, "(D, r)"), "scale_perturb_diag": (1, "(r,)")}

    def __init__(self, shift=None, scale_diag=None, scale_tril=None, scale_perturb_factor=None,
                 scale_perturb_diag=None, *, dtype=None, name=None):
        given = {key: value for key, value in zip(
            self._SHAPES, (shift, scale_diag, scale_tril, scale_perturb_factor, scale_perturb_diag))
            if value is not None}
        super().__init__(dtype=resolve_dtype(dtype, *given.values(), where=type(self).__name__), name=name)
        if not given:
            raise ValueError(f"{self.name}: give at least one of shift, scale_diag, scale_tril, "
                             f"scale_perturb_factor (they fix the dimension D)")
        if scale_perturb_diag is not None and scale_perturb_factor is None:
            raise ValueError(f"{self.name}: scale_perturb_diag needs scale_perturb_factor")
        params = {key: _param(value, self.dtype, f"{self.name}.__init__", key) for key, value in given.items()}
        for key, value in params.items():
            ndim, shape = self._SHAPES[key]
            if value.ndim != ndim:
                raise ValueError(f"{self.name}: {key} must have shape {shape}; got {value.shape}")
        sizes = {key: value.shape[0] for key, value in params.items() if key != "scale_perturb_diag"}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{key} has shape {params[key].shape}" for key in sizes)
            raise ValueError(f"{self.name}: the parameters disagree on the dimension D: {listed}")
        dim = next(iter(sizes.values()))
        if dim == 0:
            raise ValueError(f"{self.name}: the dimension D must be at least 1")
        if "scale_tril" in params and params["scale_tril"].shape[1] != dim:
            raise ValueError(f"{self.name}: scale_tril must be square, shape (D, D); "
                             f"got {params['scale_tril'].shape}")
        if "scale_perturb_factor" in params:
            rank = params["scale_perturb_factor"].shape[1]
            if rank == 0:
                raise ValueError(f"{self.name}: scale_perturb_factor must have at least one column; "
                                 f"got shape {params['scale_perturb_factor'].shape}")
            if "scale_perturb_diag" in params and params["scale_perturb_diag"].shape != (rank,):
                raise ValueError(f"{self.name}: scale_perturb_diag must have shape (r,) = ({rank},) to match "
                                 f"scale_perturb_factor; got {params['scale_perturb_diag'].shape}")
        self.params.update(params)
        self.event_size = dim
        self._operator(None)

    def _operator(self, method):
        """The current ``S``, refused if singular: parameters change in place during training."""
        where = self.name if method is None else f"{self.name}.{method}"
        p = self.params
        for key, value in p.items():
            check_finite(value, where, key)
        if not any(key in p for key in ("scale_diag", "scale_tril", "scale_perturb_factor")):
            return None   # shift only: S is exactly the identity
        if "scale_tril" in p:
            tril = np.tril(p["scale_tril"])
            if "scale_diag" in p:
                tril[np.diag_indices(self.event_size)] += p["scale_diag"]
            a = np.diagonal(tril).copy()
        else:
            tril = None
            a = p["scale_diag"].copy() if "scale_diag" in p else np.ones(self.event_size, dtype=self.dtype)
        if np.any(a == 0):
            i = int(np.argmax(a == 0))
            raise ValueError(f"{where}: A = diag(scale_diag) + tril(scale_tril) must have a non-zero diagonal "
                             f"(S is singular, or at least not invertible through A); got 0 at index {i}")
        factor = p.get("scale_perturb_factor")
        diag = p.get("scale_perturb_diag")
        if factor is not None and diag is None:
            diag = np.ones(factor.shape[1], dtype=self.dtype)
        op = _LowRankUpdate(a, tril, factor, diag)
        if not np.isfinite(op.log_det):
            raise ValueError(f"{where}: S = A + V diag(d) V^T is singular (log|det S| = {float(op.log_det)})")
        return op

    def _shift(self):
        return self.params.get("shift", 0.0)

    # ---- passes; ``op`` is None when S is the identity (shift only)
    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        op = self._operator("forward_log_det_jacobian")
        return self._constant_log_det(0.0 if op is None else op.log_det, x)

    def _inverse_log_det(self, y):
        self._check(y, "inverse_log_det_jacobian", "y")
        op = self._operator("inverse_log_det_jacobian")
        return self._constant_log_det(0.0 if op is None else -op.log_det, y)

    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        op = self._operator("forward")
        y = (x.copy() if op is None else op.matvec(x)) + self._shift()
        return y, self._constant_log_det(0.0 if op is None else op.log_det, y), (x, op)

    def _inverse_pass(self, y):
        self._check(y, "inverse", "y")
        op = self._operator("inverse")
        centred = y - self._shift()
        x = centred if op is None else op.solve(centred)
        return x, self._constant_log_det(0.0 if op is None else -op.log_det, x), (x, op)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, op = ctx
        grad_x = grad_y.copy() if op is None else op.rmatvec(grad_y)
        grads = self._scale_grads(op, grad_y, x, grad_log_det.sum())
        if "shift" in self.params:
            grads["shift"] = grad_y.reshape(-1, self.event_size).sum(axis=0)
        return grad_x, grads

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, op = ctx
        grad_y = grad_x.copy() if op is None else op.solve_transposed(grad_x)
        grads = self._scale_grads(op, -grad_y, x, -grad_log_det.sum())
        if "shift" in self.params:
            grads["shift"] = -grad_y.reshape(-1, self.event_size).sum(axis=0)
        return grad_y, grads

    def _scale_grads(self, op, left, right, weight):
        """Parameter gradients for ``G = dL/dS = sum_batch left right^T + weight * S^-T``."""
        p = self.params
        grads = {}
        if op is None:
            return grads
        dim = self.event_size
        left = left.reshape(-1, dim)
        right = right.reshape(-1, dim)
        V, d = op.V, op.d
        if V is not None:
            # S^-T = A^-T - W U^T with W = A^-T V diag(d) C^-T
            a_inv_t_v = op.a_solve(V.T, transpose=True).T
            W = (a_inv_t_v * d) @ op.C_inv.T
        if "scale_diag" in p:
            diag_s_inv = 1.0 / op.a if V is None else 1.0 / op.a - (W * op.U).sum(axis=1)
            grads["scale_diag"] = (left * right).sum(axis=0) + weight * diag_s_inv
        if "scale_tril" in p:
            # the strict lower part of A^-T is zero, so tril(S^-T) = diag(1/a) - tril(W U^T)
            g = left.T @ right
            if V is not None:
                g -= weight * (W @ op.U.T)
            g[np.diag_indices(dim)] += weight / op.a
            grads["scale_tril"] = np.tril(g)
        if V is not None:
            left_v, right_v = left @ V, right @ V
            s_inv_v = op.U @ op.C_inv
            s_inv_t_v = a_inv_t_v - W @ op.M.T
            grads["scale_perturb_factor"] = (left.T @ right_v + right.T @ left_v
                                             + weight * (s_inv_v + s_inv_t_v)) * d
            if "scale_perturb_diag" in p:
                # diag(V^T S^-T V) = diag(V^T S^-1 V) = diag(M C^-1)
                grads["scale_perturb_diag"] = ((left_v * right_v).sum(axis=0)
                                               + weight * (op.M * op.C_inv.T).sum(axis=1))
        return grads
