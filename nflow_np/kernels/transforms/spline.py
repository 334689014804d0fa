"""The rational-quadratic spline of NSF (Durkan et al. 2019), one element at a time.

Parameters per element: ``K`` unnormalized widths, ``K`` heights and ``K - 1``
interior-knot derivatives (``3K - 1``), in that order. The parameterization,
the bin search, the evaluation anchored at the nearer end of the bin and the
stable root of the inverse are those of the NumPy reference,
:mod:`nflow_np.kernels.spline` (whose docstring has the formulas), step for
step. A pass leaves the element's widths and heights replaced by their softmax
weights (:func:`_prepare`), which the VJP reads: nothing else is kept per
element, and the knots are rebuilt from the weights while scanning for the
bin (``K`` is small, and the parameters sit in cache).

The ``"bounded"`` parameterization (``SplineSpec.parameterization``; flag
``st[13]``) is a branch of the same math, not a compiled variant of its own: a
pass leaves ``e = exp(v - c_w)`` of the soft-clipped logits ``v = softclip(u,
c_w)`` in place of the widths and heights. As ``|v| < c_w``, ``e`` lies in
``(exp(-2 c_w), 1]``, so the softmax weights are ``e / sum(e)`` with no shift
by the largest logit and no exponential after the pass; the VJP recovers
``v = log(e) + c_w`` for ``dv/du = (1 - |v| / c_w)^2``, which the weights alone
do not give. Its widths are the plain softmax, so it runs with the floors 0 and
the scales 1 in ``st[5], st[6], st[8], st[9]``.

``st`` is ``(0, 1, 2, B, 2B, min_width, min_height, min_derivative,
1 - min_width K, 1 - min_height K, c0, circular, K, bounded, c_w, c_d)``, the derived values
computed in float64 on the host and rounded once to the dtype. ``circular`` (1 or 0) selects
the circular spline (:mod:`.circular_spline`): ``K`` derivatives per element, the
last the shared end slope ``d_0 = d_K``, and no value outside ``[-B, B]``. ``bounded``
(1 or 0) selects the bounded parameterization; ``c_w``, ``c_d`` are its clip levels
(:func:`nflow_np.kernels.spline.clip_levels`).
"""

import math

from ..backend import numba_twin
from ..specs import SplineSpec

SPEC = SplineSpec


def constants(spec):
    k = spec.bins
    mw, mh, md = spec.min_bin_width, spec.min_bin_height, spec.min_derivative
    bounded = spec.parameterization == "bounded"
    if bounded:          # W = softmax(v): no floor, unit scale
        mw = mh = 0.0
    c_d = -math.log(md)
    return (0.0, 1.0, 2.0, spec.bound, 2.0 * spec.bound, mw, mh, md, 1.0 - mw * k, 1.0 - mh * k,
            math.log(math.expm1(1.0 - md)), 1.0 if spec.circular else 0.0, float(k), 1.0 if bounded else 0.0,
            0.5 * c_d, c_d)


@numba_twin
def settings(c):
    return c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], int(c[12]), c[13], c[14], c[15]


@numba_twin
def _softclip(u, c):
    """``softclip(u, c) = u / (1 + |u| / c)``, written ``c u / (c + |u|)`` as the NumPy reference writes it."""
    return u / (c + abs(u)) * c


@numba_twin
def _total(p, r, base, stride, nbins):
    """``sum e`` over ``K`` prepared sizes of the bounded parameterization: their softmax weights are ``e / total``."""
    total = p[r, base]
    for q in range(1, nbins):
        total += p[r, base + q * stride]
    return total


@numba_twin
def _derivatives(st):
    """How many derivatives an element has: ``K - 1``, or ``K`` for a circular spline."""
    if st[11] > st[0]:
        return st[12]
    return st[12] - 1


@numba_twin
def _outside(v, st):
    """A pass's result at ``v`` outside ``[-B, B]`` (or NaN): the identity with log-det 0, or NaN for a circular
    spline, which has no value there (the bijectors' NumPy passes refuse such input with a ValueError)."""
    zero = st[0]
    if st[11] > zero:
        nan = zero / zero
        return nan, nan
    return v, zero


@numba_twin
def _softmax(p, r, base, stride, nbins):
    """Overwrite ``K`` unnormalized sizes with their softmax weights."""
    top = p[r, base]
    for q in range(1, nbins):
        v = p[r, base + q * stride]
        if v > top:
            top = v
    total = top - top
    for q in range(nbins):
        e = math.exp(p[r, base + q * stride] - top)
        p[r, base + q * stride] = e
        total += e
    for q in range(nbins):
        p[r, base + q * stride] = p[r, base + q * stride] / total


@numba_twin
def _prepare(p, r, base, stride, st):
    """The element's widths and heights as softmax weights, in place (the derivatives stay raw); with the
    bounded parameterization, as ``exp(softclip(u) - c_w)``, their unnormalized weights."""
    nbins = st[12]
    if st[13] > st[0]:
        c = st[14]
        for q in range(2 * nbins):
            p[r, base + q * stride] = math.exp(_softclip(p[r, base + q * stride], c) - c)
        return
    _softmax(p, r, base, stride, nbins)
    _softmax(p, r, base + nbins * stride, stride, nbins)


@numba_twin
def _knot_derivative(p, r, bd, stride, j, st):
    """``d_j`` and its derivative with respect to ``ud_{(j-1) mod K}`` (0 at the fixed ends ``j = 0, K``, unless
    circular: there ``ud_{K-1}`` sets both)."""
    zero, one, md, shift, nbins = st[0], st[1], st[7], st[10], st[12]
    if j == 0 or j == nbins:
        if not st[11] > zero:
            return one, zero
        j = nbins
    if st[13] > zero:     # d = exp(v), v = softclip(u, c_d)
        c = st[15]
        v = _softclip(p[r, bd + (j - 1) * stride], c)
        d = math.exp(v)
        a = one - abs(v) / c
        return d, d * a * a
    z = p[r, bd + (j - 1) * stride] + shift
    if z > zero:     # softplus without overflow
        e = math.exp(-z)
        return md + z + math.log1p(e), one / (one + e)
    e = math.exp(z)
    return md + math.log1p(e), e / (one + e)


@numba_twin
def _locate(v, p, r, base, stride, st, inverse):
    """The bin of ``v`` (searched in x, or in y for the inverse) and its quantities, anchored at the nearer end.

    ``p`` holds the element's parameters as :func:`_prepare` leaves them. Returns
    ``(k, left, sigma, xa, ya, da, db, w, h, dist, sig_k, sig_k1)``.
    """
    zero, one, bound, two_bound, mw, mh, sw, sh, nbins = st[0], st[1], st[3], st[4], st[5], st[6], st[8], st[9], st[12]
    bh = base + nbins * stride
    bounded = st[13] > zero
    inv_w = one
    inv_h = one
    if bounded:          # p holds the unnormalized weights: normalized as they are read
        inv_w = one / _total(p, r, base, stride, nbins)
        inv_h = one / _total(p, r, bh, stride, nbins)
    cx = zero
    cy = zero
    x0 = -bound
    y0 = -bound
    x1 = bound
    y1 = bound
    k = 0
    for q in range(nbins):
        # knot q + 1 as the cumulative sum builds it, the last pinned to B
        pw = p[r, base + q * stride]
        ph = p[r, bh + q * stride]
        if bounded:
            pw = pw * inv_w
            ph = ph * inv_h
        cx += mw + sw * pw
        cy += mh + sh * ph
        if q + 1 == nbins:
            x1 = bound
            y1 = bound
            break
        x1 = -bound + two_bound * cx
        y1 = -bound + two_bound * cy
        # a knot opens its bin: v on knot q + 1 lies in bin q + 1
        if v >= (y1 if inverse else x1):
            x0 = x1
            y0 = y1
            k = q + 1
        else:
            break
    bd = base + 2 * nbins * stride
    d_k, sig_k = _knot_derivative(p, r, bd, stride, k, st)
    d_k1, sig_k1 = _knot_derivative(p, r, bd, stride, k + 1, st)
    w = x1 - x0
    h = y1 - y0
    lo = y0 if inverse else x0
    hi = y1 if inverse else x1
    if v - lo <= hi - v:
        return k, True, one, x0, y0, d_k, d_k1, w, h, v - lo, sig_k, sig_k1
    return k, False, -one, x1, y1, d_k1, d_k, w, h, hi - v, sig_k, sig_k1


@numba_twin
def _partials(xi, s, da, db, one, two):
    """``(R, f_x, ld, R_s, R_da, R_db, ld_xi, ld_s, ld_da, ld_db)`` at anchored position ``xi``."""
    t = xi * (one - xi)
    u = one - xi
    delta = da + db - two * s
    inv_d = one / (s + delta * t)
    pp = s * xi * xi + da * t
    q = db * xi * xi + two * s * t + da * u * u
    rr = s * inv_d
    one_m_2t = one - two * t
    return (pp * inv_d, q * rr * rr, math.log(q) + two * math.log(rr),
            (xi * xi - pp * inv_d * one_m_2t) * inv_d,
            t * (s * u * u + db * t) * inv_d * inv_d,
            -pp * t * inv_d * inv_d,
            two * (db * xi + s * (one - two * xi) - da * u) / q - two * delta * (one - two * xi) * inv_d,
            two / s + two * t / q - two * one_m_2t * inv_d,
            u * u / q - two * t * inv_d,
            xi * xi / q - two * t * inv_d)


@numba_twin
def _solve(dist, h, s, da, db, zero, two):
    """The inverse's anchored ``xi``: the root ``2c / (-b - sqrt(b^2 - 4ac))``, which does not cancel."""
    delta = da + db - two * s
    qa = h * (s - da) + dist * delta
    qb = h * da - dist * delta
    qc = -s * dist
    disc = qb * qb - two * two * qa * qc
    if disc < zero:
        disc = zero
    return two * qc / (-qb - math.sqrt(disc))


@numba_twin
def _softmax_backward(p, gp, r, base, stride, nbins, k, g_left, g_right, scale, st):
    """From the gradients of bin ``k``'s two knots to those of the ``K`` unnormalized sizes (into ``gp``);
    ``p`` holds their softmax weights, or (bounded) their unnormalized weights ``e = exp(v - c_w)``, normalized
    here, with the clip chained through ``dv/du = (1 - |v| / c_w)^2``, ``v = log(e) + c_w``."""
    zero, one, two_bound = st[0], st[1], st[4]
    bounded = st[13] > zero
    c = st[14]
    inv = one
    if bounded:
        inv = one / _total(p, r, base, stride, nbins)
    if k < 1:
        g_left = zero              # x_0 = -B is fixed
    if k + 1 > nbins - 1:
        g_right = zero             # x_K = B is fixed
    mean = zero
    for i in range(nbins):
        g = zero
        if i < k:
            g += g_left
        if i <= k:
            g += g_right
        mean += p[r, base + i * stride] * inv * g
    for i in range(nbins):
        g = zero
        if i < k:
            g += g_left
        if i <= k:
            g += g_right
        e = p[r, base + i * stride]
        if bounded:
            a = one - abs(math.log(e) + c) / c
            gp[r, base + i * stride] = scale * (e * inv) * two_bound * (g - mean) * (a * a)
        else:
            gp[r, base + i * stride] = scale * e * two_bound * (g - mean)


@numba_twin
def density(v, p, r, base, stride, st):
    """``(g(v), log g'(v))``; the identity (and 0) outside ``[-B, B]`` or at NaN. Leaves ``p`` prepared."""
    bound = st[3]
    if not (v >= -bound and v <= bound):
        return _outside(v, st)
    _prepare(p, r, base, stride, st)
    b = _locate(v, p, r, base, stride, st, False)
    w, h = b[7], b[8]
    q = _partials(b[9] / w, h / w, b[5], b[6], st[1], st[2])
    return b[4] + b[2] * h * q[0], q[2]


@numba_twin
def sampling(v, p, r, base, stride, st):
    """``(g^-1(v), log dg^-1/dv)``; the identity outside ``[-B, B]``."""
    bound = st[3]
    if not (v >= -bound and v <= bound):
        return _outside(v, st)
    _prepare(p, r, base, stride, st)
    b = _locate(v, p, r, base, stride, st, True)
    w, h = b[7], b[8]
    s = h / w
    xi = _solve(b[9], h, s, b[5], b[6], st[0], st[2])
    q = _partials(xi, s, b[5], b[6], st[1], st[2])
    return b[3] + b[2] * xi * w, -q[2]


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, two, bound, sw, sh, nbins = st[0], st[1], st[2], st[3], st[8], st[9], st[12]
    bh = base + nbins * stride
    bd = base + 2 * nbins * stride
    n_derivatives = _derivatives(st)
    if not (v >= -bound and v <= bound):
        for q in range(2 * nbins + n_derivatives):
            gp[r, base + q * stride] = zero
        return _outside(g, st)[0]
    k, left, sigma, xa, ya, da, db, w, h, dist, sig_k, sig_k1 = _locate(v, p, r, base, stride, st, False)
    s = h / w
    xi = dist / w
    big_r, f_x, _, r_s, r_da, r_db, ld_xi, ld_s, ld_da, ld_db = _partials(xi, s, da, db, one, two)
    sg = sigma * g
    g_xi = sg * w * f_x + gld * ld_xi
    g_s = sg * h * r_s + gld * ld_s
    g_da = sg * h * r_da + gld * ld_da
    g_db = sg * h * r_db + gld * ld_db
    g_sh = g_s / w + sg * big_r          # through s = h / w and h, per unit of the far knot's height
    g_xa = sigma * (g_xi * (xi - one) + g_s * s) / w
    g_xb = -sigma * (g_xi * xi + g_s * s) / w
    g_ya = g - sigma * g_sh
    g_yb = sigma * g_sh
    if left:
        _softmax_backward(p, gp, r, base, stride, nbins, k, g_xa, g_xb, sw, st)
        _softmax_backward(p, gp, r, bh, stride, nbins, k, g_ya, g_yb, sh, st)
        g_dk = g_da
        g_dk1 = g_db
    else:
        _softmax_backward(p, gp, r, base, stride, nbins, k, g_xb, g_xa, sw, st)
        _softmax_backward(p, gp, r, bh, stride, nbins, k, g_yb, g_ya, sh, st)
        g_dk = g_db
        g_dk1 = g_da
    # d_j comes from ud_{(j - 1) mod K}; the end derivatives d_0 = d_K = 1 are constants unless circular, where
    # ud_{K - 1} is both
    for q in range(n_derivatives):
        gp[r, bd + q * stride] = zero
    if k >= 1:
        gp[r, bd + (k - 1) * stride] += g_dk * sig_k
    elif n_derivatives == nbins:
        gp[r, bd + (nbins - 1) * stride] += g_dk * sig_k
    if k < n_derivatives:
        gp[r, bd + k * stride] += g_dk1 * sig_k1
    return sigma * g_xi / w
