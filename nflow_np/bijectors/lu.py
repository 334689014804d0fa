"""``LULinear``: a learnable dense invertible linear map kept in LU-factored form.

Storing ``W = L U`` instead of ``W`` makes the log-det a sum over ``U``'s
diagonal and the inverse two triangular solves: O(d) and O(d^2) per vector
instead of a determinant and a dense solve.
"""

import numpy as np

from .._validation import as_float_array, as_generator, check_event_shape, check_finite, resolve_dtype
from .base import PassBijector
from .linear import _solve_triangular


class LULinear(PassBijector):
    """``y = W x + bias`` with ``W = L U`` learned through its LU factors.

    ``L`` is unit lower triangular: its strictly lower part is the parameter
    ``"lower"``. ``U`` is upper triangular: its strictly upper part is the
    parameter ``"upper"`` and its diagonal is ``sign * exp(log_diag)``, with
    ``sign`` a fixed vector of +-1 (not trained), so ``W`` stays invertible
    whatever the parameter values. The other entries of ``"lower"`` and
    ``"upper"`` (diagonal included) are ignored and get zero gradients.

    forward log-det ``sum(log_diag)`` (read off the diagonal, never a
    determinant); inverse ``x = U^-1 L^-1 (y - bias)`` by forward then back
    substitution, log-det ``-sum(log_diag)``.

    Gradients, with vectors as rows (``Y = X W^T + bias``), ``G`` the sum of
    the log-det's upstream gradient and ``dW`` the gradient of ``W``:
    ``dL = dW U^T``, ``dU = L^T dW``, ``d lower = strict_tril(dL)``,
    ``d upper = strict_triu(dU)``, ``d log_diag = diag(dU) * diag(U) +- G``.
    Forward ``dW = sum_batch grad_y x^T``, ``grad_x = W^T grad_y``; inverse
    ``grad_y = W^-T grad_x`` (two triangular solves) and
    ``dW = -sum_batch grad_y x^T``.

    Parameters
    ----------
    features : int
        The event size ``d``.
    rng : Generator or int, optional
        None (default) starts at the identity map (all parameters zero).
        Given, the strictly triangular parts of ``lower`` and ``upper`` are drawn
        from N(0, (0.1 / sqrt(d))^2) so that the map starts near, but not at,
        the identity; ``log_diag`` and ``bias`` still start at zero.
    sign : array_like of +-1, shape (d,), optional
        The fixed signs of ``U``'s diagonal; all +1 by default. Read-only
        attribute ``sign``.
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    Attributes
    ----------
    params : {"lower", "upper", "log_diag", "bias"}
        Shapes ``(d, d)``, ``(d, d)``, ``(d,)``, ``(d,)``.
    weight : ndarray, shape (d, d)
        The dense ``W = L U`` (a fresh array, for inspection).

    References
    ----------
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018, section 3.2.
    Durkan, Bekasov, Murray & Papamakarios, nflows (``nflows.transforms.LULinear``), 2020.
    """

    event_ndims = 1

    def __init__(self, features, *, rng=None, sign=None, dtype=np.float64, name=None):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        where = f"{self.name}.__init__"
        if isinstance(features, (bool, np.bool_)) or not isinstance(features, (int, np.integer)):
            raise TypeError(f"{where}: features must be a positive int; got {features!r}")
        if features < 1:
            raise ValueError(f"{where}: features must be a positive int; got {features}")
        d = self.features = int(features)
        lower = np.zeros((d, d))
        upper = np.zeros((d, d))
        if rng is not None:
            generator = as_generator(rng)
            scale = 0.1 / np.sqrt(d)
            lower = np.tril(generator.normal(scale=scale, size=(d, d)), -1)
            upper = np.triu(generator.normal(scale=scale, size=(d, d)), 1)
        if sign is None:
            sign = np.ones(d, dtype=self.dtype)
        else:
            sign = np.array(as_float_array(sign, None, where, "sign"), dtype=self.dtype)
            if sign.shape != (d,) or not np.all(np.abs(sign) == 1):
                raise ValueError(f"{where}: sign must be a vector of {d} entries, each +1 or -1; got {sign}")
        sign.setflags(write=False)
        self.sign = sign
        self.params["lower"] = lower.astype(self.dtype)
        self.params["upper"] = upper.astype(self.dtype)
        self.params["log_diag"] = np.zeros(d, dtype=self.dtype)
        self.params["bias"] = np.zeros(d, dtype=self.dtype)

    # ------------------------------------------------------------------ factors
    def _check_input_shape(self, arr, where, argname):
        check_event_shape(arr, 1, self.features, where, argname)

    def _check(self, arr, method, argname):
        # A Chain calls the private passes directly, after checking only its own input.
        self._check_input_shape(arr, f"{self.name}.{method}", argname)

    def _factors(self, method):
        """``(L, U)`` as dense triangular matrices, checked finite."""
        where = f"{self.name}.{method}"
        d = self.features
        for key in ("lower", "upper", "log_diag", "bias"):
            check_finite(self.params[key], where, key)
        diagonal = self.sign * np.exp(self.params["log_diag"])
        check_finite(diagonal, where, "exp(log_diag)")
        lower = np.tril(self.params["lower"], -1)
        lower[np.diag_indices(d)] = 1.0
        upper = np.triu(self.params["upper"], 1)
        upper[np.diag_indices(d)] = diagonal
        return lower, upper

    @property
    def weight(self):
        lower, upper = self._factors("weight")
        return lower @ upper

    def _log_det(self):
        return self.params["log_diag"].sum()

    @staticmethod
    def _constant_log_det(value, like):
        return np.full(like.shape[:-1], value, dtype=like.dtype)

    def _param_grads(self, lower, upper, grad_w, log_det_weight, grad_bias):
        grad_upper_full = lower.T @ grad_w
        grad_log_diag = np.diagonal(grad_upper_full) * np.diagonal(upper) + log_det_weight
        return {
            "lower": np.tril(grad_w @ upper.T, -1),
            "upper": np.triu(grad_upper_full, 1),
            "log_diag": grad_log_diag,
            "bias": grad_bias,
        }

    # ------------------------------------------------------------------ forward: base -> data
    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        lower, upper = self._factors("forward")
        weight = lower @ upper
        y = x @ weight.T + self.params["bias"]
        return y, self._constant_log_det(self._log_det(), y), (x, lower, upper, weight)

    def _forward_log_det(self, x):
        self._check(x, "forward_log_det_jacobian", "x")
        self._factors("forward_log_det_jacobian")
        return self._constant_log_det(self._log_det(), x)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, lower, upper, weight = ctx
        d = self.features
        g = grad_y.reshape(-1, d)
        grad_w = g.T @ x.reshape(-1, d)
        grads = self._param_grads(lower, upper, grad_w, grad_log_det.sum(), g.sum(axis=0))
        return grad_y @ weight, grads

    # ------------------------------------------------------------------ inverse: data -> base
    def _inverse_pass(self, y):
        self._check(y, "inverse", "y")
        lower, upper = self._factors("inverse")
        u = _solve_triangular(lower, y - self.params["bias"], lower=True, unit_diagonal=True)
        x = _solve_triangular(upper, u, lower=False)
        return x, self._constant_log_det(-self._log_det(), x), (x, lower, upper)

    def _inverse_log_det(self, y):
        self._check(y, "inverse_log_det_jacobian", "y")
        self._factors("inverse_log_det_jacobian")
        return self._constant_log_det(-self._log_det(), y)

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        x, lower, upper = ctx
        d = self.features
        # W^T g = grad_x with W^T = U^T L^T: U^T is lower triangular, L^T unit upper triangular
        v = _solve_triangular(upper.T, grad_x, lower=True)
        grad_y = _solve_triangular(lower.T, v, lower=False, unit_diagonal=True)
        g = grad_y.reshape(-1, d)
        grad_w = -(g.T @ x.reshape(-1, d))
        grads = self._param_grads(lower, upper, grad_w, -grad_log_det.sum(), -g.sum(axis=0))
        return grad_y, grads
