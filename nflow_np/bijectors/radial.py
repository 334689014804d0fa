"""``Radial``: the radial flow, contracting or expanding space around a point ``z0``."""

import numpy as np

from .._special import sigmoid, softplus
from .._validation import as_generator, check_finite, resolve_dtype
from .planar import _ImplicitInverse, check_size


def _norm(v):
    """``|v|`` along the last axis, scaled by the largest entry so that no square overflows."""
    top = np.abs(v).max(axis=-1)
    safe = np.where(top > 0, top, 1.0)[..., None]
    return top * np.sqrt(((v / safe) ** 2).sum(axis=-1))


class Radial(_ImplicitInverse):
    """Radial flow: ``y = x + beta_hat (x - z0) / (alpha + r)``, ``r = |x - z0|``.

    ``alpha = softplus(raw_alpha) > 0`` and ``beta_hat = -alpha + softplus(raw_beta) > -alpha`` keep the map
    invertible: ``|y - z0| = r (alpha + beta_hat + r) / (alpha + r)`` increases with ``r``. With
    ``h = 1 / (alpha + r)``, the forward log-det is
    ``(d - 1) log(1 + beta_hat h) + log(1 + beta_hat h + beta_hat h'(r) r)``, where the last term is
    ``log(1 + beta_hat alpha / (alpha + r)^2)``.

    Inverse: ``rho = |y - z0|`` gives ``r`` as the positive root of the quadratic
    ``r^2 + (alpha + beta_hat - rho) r - alpha rho = 0``, taken in the form that
    does not cancel (``2 alpha rho / (p + sqrt(p^2 + 4 alpha rho))`` for
    ``p = alpha + beta_hat - rho >= 0``, ``(-p + sqrt(p^2 + 4 alpha rho)) / 2``
    otherwise); the direction is shared, ``x - z0 = (y - z0) (alpha + r) / (alpha + beta_hat + r)``.
    The inverse's gradients come from the forward Jacobian at the solution
    (eigenvalues ``1 + beta_hat h`` across the radius, ``1 + beta_hat alpha h^2``
    along it), by the implicit function theorem.

    The map is not differentiable at ``x = z0`` (``r`` is not); its gradients
    there treat the radial direction as zero.

    Parameters
    ----------
    dim : int
        The event size ``d``.
    rng : Generator or int, optional
        ``z0`` is drawn from N(0, 1) and ``raw_beta`` from N(0, 1);
        ``raw_alpha`` starts at 0 (``alpha = log 2``).
    dtype : dtype
        float64 (default) or float32.
    name : str, optional

    Attributes
    ----------
    params : {"z0", "raw_alpha", "raw_beta"}
        Shapes ``(d,)``, ``()``, ``()``.

    References
    ----------
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, section 4.1 and appendix A.2.
    """

    def __init__(self, dim, *, rng=None, dtype=np.float64, name=None):
        super().__init__(dtype=resolve_dtype(dtype, where=type(self).__name__), name=name)
        d = self.event_size = check_size(dim, f"{self.name}.__init__", "dim")
        generator = as_generator(rng)
        self.params["z0"] = generator.normal(size=d).astype(self.dtype)
        self.params["raw_alpha"] = np.zeros((), dtype=self.dtype)
        self.params["raw_beta"] = np.asarray(generator.normal(), dtype=self.dtype)

    def _constants(self, method):
        """``(z0, alpha, beta_hat, alpha + beta_hat)`` with the parameters checked finite."""
        where = f"{self.name}.{method}"
        for key in ("z0", "raw_alpha", "raw_beta"):
            check_finite(self.params[key], where, key)
        alpha = softplus(self.params["raw_alpha"])
        gap = softplus(self.params["raw_beta"])            # alpha + beta_hat, > 0
        if not (alpha > 0 and gap > 0):
            raise ValueError(f"{where}: softplus(raw_alpha) and softplus(raw_beta) must be positive at "
                             f"{self.dtype} precision; got raw_alpha={float(self.params['raw_alpha'])!r}, "
                             f"raw_beta={float(self.params['raw_beta'])!r} (too negative)")
        return self.params["z0"], alpha, gap - alpha, gap

    def _log_det_of(self, ctx):
        return ctx[-1]

    def _terms(self, delta, r, alpha, beta):
        d = delta.shape[-1]
        h = 1.0 / (alpha + r)                 # 0 for r = inf, with no overflow on the way
        f = 1.0 + beta * h
        g = 1.0 + beta * alpha * h * h
        log_det = (d - 1) * np.log(f) + np.log(g)
        return h, f, g, log_det

    # ------------------------------------------------------------------ forward: base -> data
    def _forward_pass(self, x):
        self._check(x, "forward", "x")
        z0, alpha, beta, _ = self._constants("forward")
        delta = x - z0
        r = _norm(delta)
        h, f, g, log_det = self._terms(delta, r, alpha, beta)
        y = x + (beta * h)[..., None] * delta
        return y, log_det, (delta, r, h, f, g, log_det)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        delta, r, h, f, g, _ = ctx
        z0, alpha, beta, _ = self._constants("forward_vjp")
        d = delta.shape[-1]
        # y = z0 + f delta, log det = (d - 1) log f + log g, f = 1 + beta h, g = 1 + beta alpha h^2, h = 1 / (alpha + r)
        grad_f = (grad_y * delta).sum(axis=-1) + grad_log_det * (d - 1) / f
        grad_g = grad_log_det / g
        grad_q = -(grad_f * beta + 2.0 * grad_g * beta * alpha * h) * h * h      # the gradient of alpha + r
        grad_beta = ((grad_f + grad_g * alpha * h) * h).sum()
        grad_alpha = (grad_g * beta * h * h + grad_q).sum()
        unit = delta / np.where(r > 0, r, 1.0)[..., None]       # the radial direction (0 at z0)
        grad_x = f[..., None] * grad_y + grad_q[..., None] * unit
        grad_z0 = (grad_y - grad_x).reshape(-1, d).sum(axis=0)
        # beta_hat = softplus(raw_beta) - alpha, alpha = softplus(raw_alpha)
        grad_alpha = grad_alpha - grad_beta
        dt = self.dtype
        return grad_x, {"z0": grad_z0.astype(dt),
                        "raw_alpha": np.asarray(grad_alpha * sigmoid(self.params["raw_alpha"]), dtype=dt),
                        "raw_beta": np.asarray(grad_beta * sigmoid(self.params["raw_beta"]), dtype=dt)}

    # ------------------------------------------------------------------ inverse: data -> base
    def _solve(self, y, method):
        z0, alpha, beta, gap = self._constants(method)
        e = y - z0
        rho = _norm(e)
        p = gap - rho
        root = np.hypot(p, 2.0 * np.sqrt(alpha * rho))
        r = np.where(p >= 0, 2.0 * alpha * rho / np.where(p >= 0, p + root, 1.0), 0.5 * (root - p))
        delta = e * (1.0 - beta / (gap + r))[..., None]      # (alpha + r) / (alpha + beta_hat + r), finite as r -> inf
        x = z0 + delta
        h, f, g, log_det = self._terms(delta, r, alpha, beta)
        return x, (delta, r, h, f, g, log_det)

    def _solve_jacobian_transpose(self, ctx, v):
        # J = f I + (g - f) n n^T (symmetric), n the radial direction: J^-1 v = v / f + (1/g - 1/f) (n . v) n
        delta, r, h, f, g, _ = ctx
        unit = delta / np.where(r > 0, r, 1.0)[..., None]
        along = (unit * v).sum(axis=-1)
        return v / f[..., None] + ((1.0 / g - 1.0 / f) * along)[..., None] * unit
