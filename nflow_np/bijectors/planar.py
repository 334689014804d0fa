"""``Planar``: the planar flow ``y = x + u_hat tanh(w . x + b)``, with an inverse found by a scalar solve.

Also the base shared with :class:`~nflow_np.bijectors.Radial` (the other flow
of the same paper): maps whose forward pass is explicit and whose inverse is
not, so that the inverse pass's gradients come from the forward pass's
Jacobian at the solution (the implicit function theorem) instead of from
differentiating the solver.
"""

import numpy as np

from .._special import sigmoid, softplus
from .._validation import as_generator, check_finite, resolve_dtype
from .linear import _VectorBijector


def check_size(value, where, argname):
    """``value`` as a positive int, or a ``TypeError``/``ValueError`` naming ``argname``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {argname} must be a positive int; got {value!r}")
    if value < 1:
        raise ValueError(f"{where}: {argname} must be a positive int; got {value}")
    return int(value)


class _ImplicitInverse(_VectorBijector):
    """A vector bijector with an explicit forward pass and an inverse solved for numerically.

    Subclasses define ``_forward_pass`` (its context ``(x, ...)``, starting
    with the input), ``_forward_backward``, ``_solve(y, method)`` returning
    the inverse's ``(x, context)`` (that context is what ``_forward_backward``
    expects) and ``_solve_jacobian_transpose(ctx, g)``: ``J^-T g`` with ``J``
    the forward Jacobian at ``x``.

    Inverse VJP. With ``x = f^-1(y; theta)`` and the inverse log-det
    ``-L(x; theta)``, the upstream gradients ``(g_x, g_L)`` give, by the
    implicit function theorem, ``v = J^-T (g_x - g_L dL/dx)``,
    ``grad_y = v`` and ``grad_theta = -(df/dtheta)^T v - g_L dL/dtheta``:
    the forward backward pass at ``x`` with upstream ``(-v, -g_L)``.
    """

    def _inverse_pass(self, y):
        self._check(y, "inverse", "y")
        x, ctx = self._solve(y, "inverse")
        log_det = self._log_det_of(ctx)
        return x, -log_det, ctx

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        zeros = np.zeros_like(grad_x)
        grad_from_log_det, _ = self._forward_backward(ctx, zeros, -grad_log_det)
        v = self._solve_jacobian_transpose(ctx, grad_x + grad_from_log_det)
        _, grads = self._forward_backward(ctx, -v, -grad_log_det)
        return v, grads


def _solve_monotone(c, m, *, max_iter=200):
    """Solve ``a + m tanh(a) = c`` for ``a``, elementwise, in float64; ``m > -1`` makes it strictly increasing.

    ``|m tanh(a)| <= |m|`` brackets the root in ``[c - |m|, c + |m|]``. Each
    step is Newton's, unless it would leave the bracket or would not at least
    halve the step before the last, in which case it bisects (the safeguard of
    Numerical Recipes' ``rtsafe``, which rules out Newton cycles); every
    evaluation shrinks the bracket. A point stops once its step falls below a
    few ulps of ``a`` (or its bracket closes), so every point converges
    independently of the rest of the batch.
    """
    shape = np.shape(c)
    c = np.asarray(c, dtype=np.float64).reshape(-1)     # flat working arrays (a single point too)
    m = np.broadcast_to(np.asarray(m, dtype=np.float64), shape).reshape(-1)
    lo = c - np.abs(m)
    hi = c + np.abs(m)
    a = np.clip(c - m * np.tanh(c), lo, hi)     # one fixed-point step: exact when m = 0
    step = hi - lo                              # the last step taken
    step_before = step.copy()                   # the one before it
    active = np.ones(c.shape, dtype=bool)
    eps = np.finfo(np.float64).eps
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        ai, mi, ci = a[idx], m[idx], c[idx]
        t = np.tanh(ai)
        g = ai + mi * t - ci
        slope = t * t + (1.0 - t * t) * (1.0 + mi)     # 1 + m (1 - t^2), never below min(1, 1 + m) > 0
        lo_i = np.where(g < 0, ai, lo[idx])
        hi_i = np.where(g > 0, ai, hi[idx])
        newton_step = g / slope
        newton = ai - newton_step
        use_newton = (newton > lo_i) & (newton < hi_i) & (np.abs(newton_step) <= 0.5 * step_before[idx])
        new = np.where(use_newton, newton, 0.5 * (lo_i + hi_i))
        new = np.where(g == 0, ai, new)
        tol = 4.0 * eps * np.maximum(np.abs(new), 1.0)
        done = (g == 0) | (np.abs(new - ai) <= tol) | (hi_i - lo_i <= tol)
        step_before[idx] = step[idx]
        step[idx] = np.abs(new - ai)
        a[idx] = new
        lo[idx] = lo_i
        hi[idx] = hi_i
        active[idx[done]] = False
    if active.any():   # the safeguard halves the steps at least every other iteration: not seen in practice
        i = int(np.argmax(active))
        raise RuntimeError(f"Planar.inverse: the scalar solve did not converge in {max_iter} steps at "
                           f"c = {c[i]!r}, m = {m[i]!r}")
    return a.reshape(shape)


class Planar(_ImplicitInverse):
    """Planar flow: ``y = x + u_hat tanh(w . x + b)``, invertible by construction.

    ``u_hat = u + (m(w . u) - w . u) w / |w|^2`` with ``m(s) = -1 + softplus(s)``
    makes ``w . u_hat = m(w . u) > -1``, so that ``a + m tanh(a)`` is strictly
    increasing and the map invertible. forward log-det
    ``log(1 + (1 - tanh^2(a)) w . u_hat)``, ``a = w . x + b``, computed as
    ``tanh^2(a) + (1 - tanh^2(a)) softplus(w . u)`` (no cancellation).

    Inverse: ``w . y + b = a + m tanh(a)`` is a scalar increasing equation
    in ``a``, solved in float64 by Newton's method safeguarded with bisection
    on the bracket ``[c - |m|, c + |m|]`` (``c = w . y + b``) to a few ulps;
    then ``x = y - u_hat tanh(a)``. The inverse's gradients come from the
    forward Jacobian ``J = I + (1 - tanh^2(a)) u_hat w^T`` at the solution
    (implicit function theorem; ``J^-T`` by Sherman-Morrison), not from the
    solver's iterations.

    Parameters
    ----------
    dim : int
        The event size ``d``.
    rng : Generator or int, optional
        ``w`` and ``u`` are drawn from N(0, 1/d) each; ``b`` starts at 0.
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    Attributes
    ----------
    params : {"w", "u", "b"}
        Shapes ``(d,)``, ``(d,)``, ``()``. ``w`` must stay non-zero.
    u_hat : ndarray, shape (d,)
        The constrained ``u_hat`` (a fresh array, for inspection).

    References
    ----------
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, section 4.1 and appendix A.1.
    """

    def __init__(self, dim, *, rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        d = self.event_size = check_size(dim, f"{self.name}.__init__", "dim")
        generator = as_generator(rng)
        scale = 1.0 / np.sqrt(d)
        self.params["w"] = generator.normal(scale=scale, size=d).astype(self.dtype)
        self.params["u"] = generator.normal(scale=scale, size=d).astype(self.dtype)
        self.params["b"] = np.zeros((), dtype=self.dtype)

    def _constrained(self, method):
        """``(w, u, b, s, m_plus, n2, k, u_hat)``: ``s = w.u``, ``m_plus = softplus(s) = 1 + m``, ``n2 = |w|^2``,
        ``k = (m - s) / n2``, ``u_hat = u + k w``; parameters checked finite, ``w`` non-zero."""
        where = f"{self.name}.{method}"
        w, u, b = self.params["w"], self.params["u"], self.params["b"]
        for key in ("w", "u", "b"):
            check_finite(self.params[key], where, key)
        n2 = float(np.dot(w.astype(np.float64), w.astype(np.float64)))
        if not n2 > np.finfo(w.dtype).tiny:
            raise ValueError(f"{where}: w must be a non-zero vector (u_hat divides by |w|^2); got |w|^2 = {n2!r}")
        s = np.dot(w, u)
        m_plus = softplus(s)
        k = (softplus(-s) - 1.0) / n2           # (m - s) / |w|^2, with m - s = softplus(s) - s - 1 = softplus(-s) - 1
        u_hat = (u + k * w).astype(self.dtype)
        check_finite(u_hat, where, "u_hat")
        return w, u, b, s, m_plus, n2, k, u_hat

    @property
    def u_hat(self):
        return self._constrained("u_hat")[-1].copy()

    @staticmethod
    def _psi(t, m_plus):
        """``1 + (1 - t^2) m`` with ``m = m_plus - 1``, as ``t^2 + (1 - t^2) m_plus`` (positive, no cancellation)."""
        return t * t + (1.0 - t * t) * m_plus

    def _log_det_of(self, ctx):
        return np.log(ctx[2])

    # ------------------------------------------------------------------ forward: base -> data
    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        w, u, b, s, m_plus, n2, k, u_hat = self._constrained("forward")
        t = np.tanh(x @ w + b)
        psi = self._psi(t, m_plus)
        y = x + t[..., None] * u_hat
        return y, np.log(psi), (x, t, psi)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, t, psi = ctx
        w, u, b, s, m_plus, n2, k, u_hat = self._constrained("forward_vjp")
        m = m_plus - 1.0
        h1 = 1.0 - t * t                                        # tanh'(a)
        # d log psi / da = m tanh''(a) / psi, tanh'' = -2 t tanh'
        grad_a = (grad_y @ u_hat) * h1 - 2.0 * grad_log_det * m * t * h1 / psi
        grad_x = grad_y + grad_a[..., None] * w
        d = w.shape[0]
        grad_u_hat = (t[..., None] * grad_y).reshape(-1, d).sum(axis=0)
        grad_m = (grad_log_det * h1 / psi).sum()
        grad_w = grad_a.reshape(-1) @ x.reshape(-1, d)
        # u_hat = u + k w, k = (m - s) / n2, m = softplus(s) - 1, s = w . u, n2 = w . w
        grad_k = grad_u_hat @ w
        grad_m = grad_m + grad_k / n2
        grad_s = -grad_k / n2 + grad_m * sigmoid(s)
        grad_n2 = -grad_k * k / n2
        grad_u = grad_u_hat + grad_s * w
        grad_w = grad_w + k * grad_u_hat + grad_s * u + 2.0 * grad_n2 * w
        dt = self.dtype
        return grad_x, {"w": grad_w.astype(dt), "u": grad_u.astype(dt),
                        "b": np.asarray(grad_a.sum(), dtype=dt)}

    # ------------------------------------------------------------------ inverse: data -> base
    def _solve(self, y, method):
        w, u, b, s, m_plus, n2, k, u_hat = self._constrained(method)
        c = y.astype(np.float64) @ w.astype(np.float64) + float(b)
        a = _solve_monotone(c, float(m_plus) - 1.0)
        t64 = np.tanh(a)
        x = (y - t64[..., None] * u_hat.astype(np.float64)).astype(self.dtype)
        t = t64.astype(self.dtype)
        return x, (x, t, self._psi(t, m_plus).astype(self.dtype))

    def _solve_jacobian_transpose(self, ctx, g):
        # J^T = I + h' w u_hat^T:  J^-T g = g - h' w (u_hat . g) / (1 + h' u_hat . w)
        x, t, psi = ctx
        w, u_hat = self.params["w"], self._constrained("inverse_vjp")[-1]
        return g - ((1.0 - t * t) * (g @ u_hat) / psi)[..., None] * w
