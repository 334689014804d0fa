"""Rational-quadratic splines (Durkan et al. 2019), one monotone spline per element, and their VJPs.

Arrays: ``x``, ``y``, ``ld`` and the upstream/downstream gradients are
``(n, m)``; ``uw``, ``uh`` are ``(n, m, K)`` and ``ud`` is ``(n, m, K-1)``,
the unnormalized parameters of element ``(i, j)``'s spline, in any memory
layout (views of a network's output). Outputs are written, not accumulated.

Parameterization, per element, ``"softplus"`` (the default)::

    W = min_width + (1 - min_width K) softmax(uw)        (heights likewise)
    x_0 = -B,  x_k = -B + 2B (W_0 + ... + W_{k-1}),  x_K = B
    d_0 = d_K = 1,  d_k = min_derivative + softplus(ud_{k-1} + c0),  c0 = log(expm1(1 - min_derivative))

or ``"bounded"``, soft-clipped logits (``min_width`` and ``min_height`` unused)::

    softclip(u, c) = u / (1 + |u| / c)                   (odd, in (-c, c), slope 1 at 0)
    W = softmax(softclip(uw, c_w))                       (heights likewise)
    d_0 = d_K = 1,  d_k = exp(softclip(ud_{k-1}, c_d)),  c_d = -log(min_derivative),  c_w = c_d / 2

so that the slopes lie in ``(min_derivative, 1 / min_derivative)`` and no bin
is narrower than about ``min_derivative / K`` of ``2B``. Either way zero
parameters give the identity. On bin ``[x_k, x_{k+1})`` (``x = B``
in the last bin), with ``w, h`` its width and height, ``s = h / w``,
``xi = (x - x_k) / w``, ``t = xi (1 - xi)``::

    y = y_k + h (s xi^2 + d_k t) / D,   D = s + (d_k + d_{k+1} - 2 s) t
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s t + d_k (1 - xi)^2) / D^2

Outside ``[-B, B]`` the map is the identity (log-det 0).

A *circular* spline (Rezende et al. 2020) takes ``K`` derivatives instead of
``K - 1``: the last sets the shared end slope ``d_0 = d_K = min_derivative +
softplus(ud_{K-1} + c0)``, so that the map, which fixes ``-B`` and ``B``, is a
diffeomorphism of the circle ``[-B, B)`` with ``-B ~ B``. Every function here
takes either layout: the derivatives' count says which.

The map is symmetric under swapping the bin's ends (``xi -> 1 - xi``,
``d_k <-> d_{k+1}``, ``y - y_k -> y_{k+1} - y``), and both directions are
evaluated from the *nearer* end of the bin (``sigma = +1`` from the left,
``-1`` from the right): every knot, ``x = B`` included, then maps exactly onto
its image, and no term cancels near a knot. The inverse solves the quadratic
``a xi^2 + b xi + c = 0`` with the root ``xi = 2c / (-b - sqrt(b^2 - 4ac))``
(Durkan et al., appendix A), which does not cancel.

Backward: the partial derivatives of ``y`` and ``ld`` with respect to the
bin-local quantities (``xi``, ``s``, ``h``, ``d_k``, ``d_{k+1}``), chained to
the two knots of the bin, then through the cumulative sums (an interior knot
``x_j`` moves with every ``W_i``, ``i < j``; the end knots are fixed), the
softmax and the softplus (or the soft clips and the exponential: ``dsoftclip/du = (1 - |v| / c)^2``
with ``v = softclip(u, c)``). The inverse's VJP is the forward one at
``x = f^-1(y)`` by implicit differentiation: ``dL/dy = (gx - gld g_x) / f_x``
and ``dL/dtheta = -(dL/dy) f_theta - gld g_theta`` (``f`` the map, ``g`` its
forward log-det), with the derivatives taken at the ``x`` the inverse returns,
located as the forward pass locates it, so that the two VJPs agree to rounding.

This is the NumPy reference. The compiled engine runs the same formulas one
element at a time from :mod:`nflow_np.kernels.transforms.spline`, under the
backend's fastmath (fused multiply-adds), so its knots can differ from the
reference's in the last bit: a point exactly on a knot may then fall in the
neighbouring bin, where ``y`` and ``ld`` agree (the spline is C1) but their
gradients take the other side of the log-det's kink.
"""

import math

import numpy as np

from .._special import sigmoid, softplus


#: the ways to map the unnormalized parameters to bins and slopes (see the module docstring)
PARAMETERIZATIONS = ("softplus", "bounded")


def derivative_shift(min_derivative):
    """``c0`` with ``min_derivative + softplus(0 + c0) == 1``: zero parameters give unit knot derivatives."""
    return math.log(math.expm1(1.0 - min_derivative))


def clip_levels(min_derivative):
    """``(c_w, c_d)`` of the ``"bounded"`` parameterization: ``c_d = -log(min_derivative)``, ``c_w = c_d / 2``."""
    c_d = -math.log(min_derivative)
    return 0.5 * c_d, c_d


def _softclip_numpy(u, c):
    """``v = softclip(u, c) = u / (1 + |u| / c)`` (written ``c u / (c + |u|)``) and ``dv/du = (1 - |v| / c)^2``."""
    v = u / (c + np.abs(u)) * c
    r = 1.0 - np.abs(v) / c
    return v, r * r


# ---------------------------------------------------------------- NumPy reference

def _knots_numpy(u, bound, min_size):
    """``K + 1`` knots on ``[-bound, bound]`` (the ends exact) and the softmax ``p`` of ``u``."""
    k = u.shape[-1]
    e = np.exp(u - u.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    knots = np.empty(u.shape[:-1] + (k + 1,), dtype=u.dtype)
    knots[..., 0] = -bound
    knots[..., 1:] = -bound + 2.0 * bound * np.cumsum(min_size + (1.0 - min_size * k) * p, axis=-1)
    knots[..., k] = bound
    return knots, p


def _take(a, k, offset):
    return np.take_along_axis(a, (k + offset)[..., None], axis=-1)[..., 0]


def _spline_numpy(uw, uh, ud, bound, min_width, min_height, min_derivative, parameterization="softplus"):
    """Every element's knots ``xs``, ``ys`` and slopes ``d`` (``K + 1`` each), with what the backward needs:
    the softmax weights ``pw``, ``ph``, the floors ``mw``, ``mh`` they were mapped with, the soft clips'
    derivatives ``jw``, ``jh`` (None without) and ``dd``, the derivative of each slope in its parameter.

    ``K - 1`` derivatives set the interior slopes (the ends are 1); ``K`` set them and, with the last, the
    shared end slope ``d_0 = d_K`` of a circular spline: slope ``j`` comes from ``ud_{(j - 1) mod K}``.
    """
    nbins = uw.shape[-1]
    d = np.ones(uw.shape[:-1] + (nbins + 1,), dtype=ud.dtype)
    if parameterization == "bounded":
        c_w, c_d = clip_levels(min_derivative)
        (vw, jw), (vh, jh), (z, jd) = _softclip_numpy(uw, c_w), _softclip_numpy(uh, c_w), _softclip_numpy(ud, c_d)
        xs, pw = _knots_numpy(vw, bound, 0.0)
        ys, ph = _knots_numpy(vh, bound, 0.0)
        slopes = np.exp(z)
        dd = slopes * jd
        mw = mh = 0.0
    elif parameterization == "softplus":
        jw = jh = None
        xs, pw = _knots_numpy(uw, bound, min_width)
        ys, ph = _knots_numpy(uh, bound, min_height)
        z = ud + derivative_shift(min_derivative)
        slopes = min_derivative + softplus(z)
        dd = sigmoid(z)
        mw, mh = min_width, min_height
    else:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")
    d[..., 1:-1] = slopes[..., :nbins - 1]
    if ud.shape[-1] == nbins:
        d[..., 0] = d[..., nbins] = slopes[..., nbins - 1]
    return dict(xs=xs, ys=ys, d=d, pw=pw, ph=ph, mw=mw, mh=mh, jw=jw, jh=jh, dd=dd)


def _locate_numpy(v, spline, bound, inverse):
    """The bin of every element (searched in x, or in y for the inverse) and its anchored quantities."""
    xs, ys, d = spline["xs"], spline["ys"], spline["d"]
    inside = (v >= -bound) & (v <= bound)
    v = np.clip(v, -bound, bound)   # outside points are masked later; keep their arithmetic quiet
    own = ys if inverse else xs
    nbins = xs.shape[-1] - 1
    # a knot opens its bin (x == x_k lies in bin k), and x == B closes the last one
    k = np.sum(v[..., None] >= own[..., 1:nbins], axis=-1)
    x0, x1, y0, y1, d0, d1 = (_take(a, k, o) for a in (xs, ys, d) for o in (0, 1))
    lo, hi = (y0, y1) if inverse else (x0, x1)
    left = v - lo <= hi - v
    sigma = np.where(left, 1, -1).astype(v.dtype)
    xa, ya = np.where(left, x0, x1), np.where(left, y0, y1)
    da, db = np.where(left, d0, d1), np.where(left, d1, d0)
    w, h = x1 - x0, y1 - y0
    return dict(spline, v=v, inside=inside, k=k, left=left, sigma=sigma, xa=xa, ya=ya, da=da, db=db, w=w, h=h,
                s=h / w)


def _partials_numpy(xi, s, da, db):
    """``R = (y - y_a) sigma / h``, ``f_x = dy/dx``, ``ld`` and their partials at anchored position ``xi``."""
    t = xi * (1.0 - xi)
    u = 1.0 - xi
    delta = da + db - 2.0 * s
    inv_d = 1.0 / (s + delta * t)
    p = s * xi * xi + da * t
    q = db * xi * xi + 2.0 * s * t + da * u * u
    r = s * inv_d
    one_m_2t = 1.0 - 2.0 * t
    return dict(
        R=p * inv_d, f_x=q * r * r, ld=np.log(q) + 2.0 * np.log(r),
        R_s=(xi * xi - p * inv_d * one_m_2t) * inv_d,
        R_da=t * (s * u * u + db * t) * inv_d * inv_d,     # D - P written without cancellation
        R_db=-p * t * inv_d * inv_d,
        ld_xi=2.0 * (db * xi + s * (1.0 - 2.0 * xi) - da * u) / q - 2.0 * delta * (1.0 - 2.0 * xi) * inv_d,
        ld_s=2.0 / s + 2.0 * t / q - 2.0 * one_m_2t * inv_d,
        ld_da=u * u / q - 2.0 * t * inv_d,
        ld_db=xi * xi / q - 2.0 * t * inv_d)


def _solve_numpy(b):
    """Anchored ``xi`` of the inverse: the stable root of the quadratic in ``xi``."""
    dist = b["sigma"] * (b["v"] - b["ya"])
    h, s, da = b["h"], b["s"], b["da"]
    delta = da + b["db"] - 2.0 * s
    qa = h * (s - da) + dist * delta
    qb = h * da - dist * delta
    qc = -s * dist
    disc = np.maximum(qb * qb - 4.0 * qa * qc, 0.0)
    return 2.0 * qc / (-qb - np.sqrt(disc))


def _param_grads_numpy(b, gy, gld, q, xi, bound, guw, guh, gud):
    """Chain ``gy``, ``gld`` (upstreams of ``y`` and ``ld``) to the parameters; returns ``dL/dx``."""
    sigma, w, h, s = b["sigma"], b["w"], b["h"], b["s"]
    sg = sigma * gy
    g_xi = sg * w * q["f_x"] + gld * q["ld_xi"]
    g_s = sg * h * q["R_s"] + gld * q["ld_s"]
    g_da = sg * h * q["R_da"] + gld * q["ld_da"]
    g_db = sg * h * q["R_db"] + gld * q["ld_db"]
    g_sh = g_s / w + sg * q["R"]          # through s = h / w and h, per unit of the far knot's height
    g_xa = sigma * (g_xi * (xi - 1.0) + g_s * s) / w
    g_xb = -sigma * (g_xi * xi + g_s * s) / w
    g_ya = gy - sigma * g_sh
    g_yb = sigma * g_sh
    left = b["left"]
    for p, (ga, gb), out, min_size, jac in ((b["pw"], (g_xa, g_xb), guw, b["mw"], b["jw"]),
                                            (b["ph"], (g_ya, g_yb), guh, b["mh"], b["jh"])):
        _softmax_backward_numpy(p, b["k"], np.where(left, ga, gb), np.where(left, gb, ga), bound, min_size, out)
        if jac is not None:
            out *= jac                    # through the soft clip
    g_dk, g_dk1 = np.where(left, g_da, g_db), np.where(left, g_db, g_da)
    nbins = b["pw"].shape[-1]
    j = np.arange(gud.shape[-1])
    k = b["k"][..., None]
    # d_k comes from ud_{(k - 1) mod K}: with K - 1 derivatives, j never reaches K - 1, so the end slopes
    # d_0 = d_K = 1 stay constants; with K (circular), ud_{K - 1} is the shared end slope d_0 = d_K
    gud[...] = ((j == (k - 1) % nbins) * g_dk[..., None] + (j == k) * g_dk1[..., None]) * b["dd"]
    return sigma * g_xi / w


def _softmax_backward_numpy(p, k, g_left, g_right, bound, min_size, out):
    """From the gradients of the bin's two knots (``k``, ``k + 1``) to those of the unnormalized sizes."""
    nbins = p.shape[-1]
    g_left = np.where(k >= 1, g_left, 0.0)[..., None]              # x_0 = -B is fixed
    g_right = np.where(k + 1 <= nbins - 1, g_right, 0.0)[..., None]  # x_K = B is fixed
    i = np.arange(nbins)
    kk = k[..., None]
    g_size = 2.0 * bound * ((i < kk) * g_left + (i <= kk) * g_right)
    out[...] = (1.0 - min_size * nbins) * p * (g_size - (p * g_size).sum(axis=-1, keepdims=True))


def rqs_forward_numpy(x, uw, uh, ud, bound, min_width, min_height, min_derivative, y, ld, *,
                      parameterization="softplus"):
    """``y = spline(x)`` and ``ld = log|dy/dx|`` per element."""
    b = _locate_numpy(x, _spline_numpy(uw, uh, ud, bound, min_width, min_height, min_derivative, parameterization),
                      bound, False)
    xi = b["sigma"] * (b["v"] - b["xa"]) / b["w"]
    q = _partials_numpy(xi, b["s"], b["da"], b["db"])
    y[...] = np.where(b["inside"], b["ya"] + b["sigma"] * b["h"] * q["R"], x)
    ld[...] = np.where(b["inside"], q["ld"], 0.0)
    return None


def rqs_inverse_numpy(y, uw, uh, ud, bound, min_width, min_height, min_derivative, x, ld, *,
                      parameterization="softplus"):
    """``x = spline^-1(y)`` and ``ld = log|dx/dy|`` per element."""
    b = _locate_numpy(y, _spline_numpy(uw, uh, ud, bound, min_width, min_height, min_derivative, parameterization),
                      bound, True)
    xi = _solve_numpy(b)
    q = _partials_numpy(xi, b["s"], b["da"], b["db"])
    x[...] = np.where(b["inside"], b["xa"] + b["sigma"] * xi * b["w"], y)
    ld[...] = np.where(b["inside"], -q["ld"], 0.0)
    return None


def rqs_forward_backward_numpy(x, uw, uh, ud, bound, min_width, min_height, min_derivative, gy, gld,
                               gx, guw, guh, gud, *, parameterization="softplus"):
    """VJP of the forward pass: ``gx``, ``guw``, ``guh``, ``gud`` from ``gy = dL/dy``, ``gld = dL/dld``."""
    b = _locate_numpy(x, _spline_numpy(uw, uh, ud, bound, min_width, min_height, min_derivative, parameterization),
                      bound, False)
    xi = b["sigma"] * (b["v"] - b["xa"]) / b["w"]
    q = _partials_numpy(xi, b["s"], b["da"], b["db"])
    inside = b["inside"]
    g_in = _param_grads_numpy(b, np.where(inside, gy, 0.0), np.where(inside, gld, 0.0), q, xi, bound,
                              guw, guh, gud)
    gx[...] = np.where(inside, g_in, gy)
    return None


def rqs_inverse_backward_numpy(y, uw, uh, ud, bound, min_width, min_height, min_derivative, gx, gld,
                               gy, guw, guh, gud, *, parameterization="softplus"):
    """VJP of the inverse pass: ``gy``, ``guw``, ``guh``, ``gud`` from ``gx = dL/dx``, ``gld = dL/dld``."""
    spline = _spline_numpy(uw, uh, ud, bound, min_width, min_height, min_derivative, parameterization)
    b = _locate_numpy(y, spline, bound, True)
    x = b["xa"] + b["sigma"] * _solve_numpy(b) * b["w"]
    # the derivatives at the x the inverse returns, located as the forward pass locates it: then this VJP is
    # the forward's at that x to rounding, where re-evaluating at the root would differ by the rounding of x
    # (relative eps |x| / (x - x_k) in xi, much more than eps in a narrow bin)
    b = dict(_locate_numpy(x, spline, bound, False), inside=b["inside"])
    xi = b["sigma"] * (b["v"] - b["xa"]) / b["w"]
    q = _partials_numpy(xi, b["s"], b["da"], b["db"])
    inside = b["inside"]
    gx_in, gld_in = np.where(inside, gx, 0.0), np.where(inside, gld, 0.0)
    g_y = (gx_in - gld_in * b["sigma"] * q["ld_xi"] / b["w"]) / q["f_x"]
    _param_grads_numpy(b, -g_y, -gld_in, q, xi, bound, guw, guh, gud)
    gy[...] = np.where(inside, g_y, gx)
    return None
