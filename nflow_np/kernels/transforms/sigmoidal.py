"""The deep sigmoidal transform of NAF (Huang et al. 2018), one element at a time.

Parameters per element: ``K`` raw slopes, ``K`` offsets ``b`` and ``K`` raw weights, in that order::

    a_j = min_slope + softplus(raw_a_j + c0),   c0 = log(expm1(1 - min_slope))   (a_j = 1 at raw 0)
    w = softmax(raw_w),   u_j = a_j v + b_j
    f(v) = logit(m),   m = sum_j w_j sigmoid(u_j)

so that zero parameters give the identity (``f(v) = logit(sigmoid(v)) = v``). The
mixture ``m`` is never formed: ``log m`` and ``log(1 - m)`` are log-sum-exps of
``log w_j + log sigmoid(+-u_j)``, and ``f = log m - log(1 - m)``; the log-derivative is
``log f'(v) = logsumexp_j(log w_j + log a_j + log sigmoid(u_j) + log sigmoid(-u_j)) - log m - log(1 - m)``.
Every term stays finite in either dtype for every finite ``v``, so no clip of ``m``
into ``(eps, 1 - eps)`` is needed: where ``m`` rounds to 1, ``log(1 - m)`` still
carries the tail (``f(v) ~ min_j a_j v + const`` far out), and the map is a bijection of the real line.

The sampling direction solves ``f(x) = v`` by Newton's method kept inside a bracket,
falling back to bisection when a step leaves it. Since ``logit`` is increasing,
``min_j u_j <= f <= max_j u_j``, so ``[min_j (v - b_j) / a_j, max_j (v - b_j) / a_j]``
holds the root. The iteration stops when a Newton step moves ``x`` by less than
``tol |x|`` (``tol`` a few ulps of the dtype), when the bracket has no float left
inside it, or after ``max_iter`` steps.

A pass leaves ``a_j`` in place of ``raw_a_j`` and ``log w_j`` in place of ``raw_w_j``, which
the VJP reads (``sigmoid(raw_a_j + c0) = -expm1(-(a_j - min_slope))``).

``st`` is ``(0, 1, 2, min_slope, c0, tol, K, max_iter)``; ``tol`` is chosen per dtype in
:func:`settings` (the constants carry a probe, ``1 + 2^-30``, that float32 rounds to 1).
"""

import math

from ..backend import numba_twin
from ..specs import SigmoidalSpec

SPEC = SigmoidalSpec

# as the NumPy reference's (nflow_np.bijectors._roots): steps at most, and the relative step tolerance, 8 ulps
MAX_ITER = 100
TOL64 = 8.0 * 2.0 ** -52
TOL32 = 8.0 * 2.0 ** -23


def constants(spec):
    ms = spec.min_slope
    return (0.0, 1.0, 2.0, ms, math.log(math.expm1(1.0 - ms)), float(spec.units), float(MAX_ITER),
            1.0 + 2.0 ** -30, TOL64, TOL32)


@numba_twin
def settings(c):
    tol = c[8] if c[7] > c[1] else c[9]
    return c[0], c[1], c[2], c[3], c[4], tol, int(c[5]), int(c[6])


@numba_twin
def _softplus(z, zero, one):
    if z > zero:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@numba_twin
def _log_sigmoids(u, zero):
    """``(log sigmoid(u), log sigmoid(-u))``, without cancellation."""
    tail = math.log1p(math.exp(-abs(u)))
    if u >= zero:
        return -tail, -u - tail
    return u - tail, -tail


@numba_twin
def _lse_add(top, total, value, one):
    """One more term of a running log-sum-exp ``top + log(total)``."""
    if value > top:
        return value, total * math.exp(top - value) + one
    return top, total + math.exp(value - top)


@numba_twin
def _prepare(p, r, base, stride, st):
    """Slopes and log-weights in place of their raw values."""
    zero, one, ms, shift, k = st[0], st[1], st[3], st[4], st[6]
    bw = base + 2 * k * stride
    top = p[r, bw]
    for j in range(1, k):
        top = max(top, p[r, bw + j * stride])
    total = zero
    for j in range(k):
        total += math.exp(p[r, bw + j * stride] - top)
    lse = top + math.log(total)
    for j in range(k):
        p[r, base + j * stride] = ms + _softplus(p[r, base + j * stride] + shift, zero, one)
        p[r, bw + j * stride] = p[r, bw + j * stride] - lse


@numba_twin
def _evaluate(v, p, r, base, stride, st):
    """``(f(v), log f'(v), log m, log(1 - m), M)`` from prepared parameters; ``M`` the log-derivative's
    log-sum-exp."""
    zero, one, k = st[0], st[1], st[6]
    bb = base + k * stride
    bw = base + 2 * k * stride
    a = p[r, base]
    lw = p[r, bw]
    ls1, ls0 = _log_sigmoids(a * v + p[r, bb], zero)
    # running log-sum-exps (top, total) of log m, log(1 - m) and M, started at unit 0
    t1, s1, t0, s0, tm, sm = lw + ls1, one, lw + ls0, one, lw + math.log(a) + ls1 + ls0, one
    for j in range(1, k):
        a = p[r, base + j * stride]
        lw = p[r, bw + j * stride]
        ls1, ls0 = _log_sigmoids(a * v + p[r, bb + j * stride], zero)
        t1, s1 = _lse_add(t1, s1, lw + ls1, one)
        t0, s0 = _lse_add(t0, s0, lw + ls0, one)
        tm, sm = _lse_add(tm, sm, lw + math.log(a) + ls1 + ls0, one)
    log_m = t1 + math.log(s1)
    log_1m = t0 + math.log(s0)
    big_m = tm + math.log(sm)
    return log_m - log_1m, big_m - log_m - log_1m, log_m, log_1m, big_m


@numba_twin
def _solve(v, p, r, base, stride, st):
    """The root ``x`` of ``f(x) = v`` (prepared parameters): bracketed, safeguarded Newton."""
    zero, one, two, tol, k, max_iter = st[0], st[1], st[2], st[5], st[6], st[7]
    bb = base + k * stride
    bw = base + 2 * k * stride
    lo = (v - p[r, bb]) / p[r, base]
    hi = lo
    x = zero
    for j in range(k):
        c = (v - p[r, bb + j * stride]) / p[r, base + j * stride]
        lo = min(lo, c)
        hi = max(hi, c)
        x += math.exp(p[r, bw + j * stride]) * c
    x = min(max(x, lo), hi)
    if not lo < hi:
        return lo
    for _ in range(max_iter):
        e = _evaluate(x, p, r, base, stride, st)
        diff = e[0] - v
        if diff == zero:
            break
        if diff > zero:
            hi = x
        else:
            lo = x
        step = x - diff / math.exp(e[1])
        if not (step > lo and step < hi):
            step = lo + (hi - lo) / two
            if not (step > lo and step < hi):
                break           # no float left between the bracket's ends
            x = step
            continue
        moved = abs(step - x)
        x = step
        if moved <= tol * abs(x):
            break
    return x


@numba_twin
def density(v, p, r, base, stride, st):
    """``(f(v), log f'(v))``; leaves ``p`` prepared."""
    _prepare(p, r, base, stride, st)
    e = _evaluate(v, p, r, base, stride, st)
    return e[0], e[1]


@numba_twin
def sampling(v, p, r, base, stride, st):
    """``(f^-1(v), -log f'(f^-1(v)))``; leaves ``p`` prepared."""
    _prepare(p, r, base, stride, st)
    x = _solve(v, p, r, base, stride, st)
    return x, -_evaluate(x, p, r, base, stride, st)[1]


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, ms, k = st[0], st[1], st[3], st[6]
    bb = base + k * stride
    bw = base + 2 * k * stride
    e = _evaluate(v, p, r, base, stride, st)
    log_m, log_1m, big_m = e[2], e[3], e[4]
    gv = zero
    for j in range(k):
        a = p[r, base + j * stride]
        lw = p[r, bw + j * stride]
        ls1, ls0 = _log_sigmoids(a * v + p[r, bb + j * stride], zero)
        s = math.exp(ls1)
        sc = math.exp(ls0)
        r1 = math.exp(lw + ls1 - log_m)              # w_j s_j / m
        r0 = math.exp(lw + ls0 - log_1m)             # w_j (1 - s_j) / (1 - m)
        rho_a = math.exp(lw + ls1 + ls0 - big_m)     # the log-derivative's share of unit j, over a_j
        rho = rho_a * a
        g_u = g * (r1 * sc + r0 * s) + gld * (rho * (sc - s) - r1 * sc + r0 * s)
        gp[r, bb + j * stride] = g_u
        gp[r, base + j * stride] = (g_u * v + gld * rho_a) * -math.expm1(-(a - ms))
        gp[r, bw + j * stride] = g * (r1 - r0) + gld * (rho - r1 - r0 + math.exp(lw))
        gv += g_u * a
    return gv
