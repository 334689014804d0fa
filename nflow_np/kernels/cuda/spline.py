"""CUDA twin of the rational-quadratic splines: :mod:`nflow_np.kernels.spline` per element, and the spline layers.

One thread per element (row, coordinate). The device functions mirror the Numba
twin of :mod:`nflow_np.kernels.spline` step for step (the same softmax, the same
cumulative sums with the end knots pinned to ``-B`` and ``B``, the same anchored
evaluation from the nearer end of the bin, the same stable root), but hold no
per-thread arrays: the twin's four scratch rows (knots and softmax weights of
widths and heights) would live in local memory, so the knots are rebuilt while
scanning for the bin, and the softmax weights recomputed from the network output
(``exp(u - max) / sum``, the twin's expression, so the values are the same) where
the backward needs them. ``K`` is small (<= ~16): re-reading ``u`` costs cache
hits, and any number of bins works.

An element's parameters are read from a 2-D buffer ``u`` at row ``r``, parameter
``q`` of the widths at column ``bw + q * stride`` (heights ``bh``, derivatives
``bd``): a coupling's network emits ``3K - 1`` contiguous parameters per
transformed coordinate (``stride`` 1), MADE emits them (parameter, feature)
(``stride = d``), and the element-wise launchers pass ``(N, K)`` arrays. Their
gradients are written at the same places of a buffer of the same layout.

The settings travel as one tuple in the kernels' dtype (:func:`spline_settings`):
``(B, 2B, min_width, min_height, min_derivative, 1 - min_width K, 1 - min_height K,
c0)``, computed as the Numba twin computes them.

The layers follow :mod:`.coupling` and :mod:`.autoregressive`: a spline coupling's
pass is the gather, the network, one element kernel (transform, per-element
log-det into an ``(n, >= nb)`` scratch) and a row kernel (pass-through columns,
the row's log-det summed in a register: no atomics); its backward is an element
kernel (``gnet`` and the direct input gradient), the network's backward and the
conditioning gradient. The autoregressive spline's density pass is one network
call and the same two kernels; its sampling the reference's ``d`` sequential
network passes, each followed by a row kernel fixing one feature.
"""

import math
from types import SimpleNamespace

import numpy as np

from .coupling import _kernels as _coupling_kernels
from .device import blocks, cuda, device_function, family, geometry, jit, launch, launch_rows
from .elementwise import fill_cuda, gather_cuda
from .mlp import mlp_backward_cuda, mlp_forward_cuda

__all__ = ["spline_settings", "rqs_forward_cuda", "rqs_inverse_cuda", "rqs_forward_backward_cuda",
           "spline_coupling_inverse_cuda", "spline_coupling_forward_cuda", "spline_coupling_inverse_backward_cuda",
           "spline_maf_inverse_cuda", "spline_maf_inverse_backward_cuda", "spline_maf_forward_cuda"]


def spline_settings(sp, bins, dtype):
    """``sp = [bound, min_width, min_height, min_derivative]`` as the kernels' settings tuple, in ``dtype``.

    As the Numba twin's ``_settings_numba``: the values rounded to the dtype first (they are read from
    ``theta``), the derived ones computed in double precision from those and rounded once.
    """
    ft = np.dtype(dtype).type
    bound, mw, mh, md = (float(ft(v)) for v in sp)
    return (ft(bound), ft(2.0 * bound), ft(mw), ft(mh), ft(md), ft(1.0 - mw * bins), ft(1.0 - mh * bins),
            ft(math.log(math.expm1(1.0 - md))))


@family
def _kernels(ft, geom):
    zero, one, two = ft(0), ft(1), ft(2)

    # ------------------------------------------------------------ one element's spline
    @device_function
    def softmax_stats(u, r, base, stride, nbins):
        """The max and the sum of ``exp(u - max)`` of ``K`` unnormalized sizes (softmax weight: exp(u-top)/total)."""
        top = u[r, base]
        for q in range(1, nbins):
            v = u[r, base + q * stride]
            if v > top:
                top = v
        total = zero
        for q in range(nbins):
            total += math.exp(u[r, base + q * stride] - top)
        return top, total

    @device_function
    def knot_derivative(ud, r, bd, stride, j, nbins, md, shift):
        """``d_j`` and its derivative with respect to ``ud_{j-1}`` (0 at the fixed ends ``j = 0, K``)."""
        if j == 0 or j == nbins:
            return one, zero
        z = ud[r, bd + (j - 1) * stride] + shift
        if z > zero:     # softplus without overflow
            e = math.exp(-z)
            return md + z + math.log1p(e), one / (one + e)
        e = math.exp(z)
        return md + math.log1p(e), e / (one + e)

    @device_function
    def locate(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st, inverse):
        """The twin's ``_locate_numba``, the knots rebuilt while scanning (x in ``own`` space, or y for the inverse).

        Returns ``(k, left, sigma, xa, ya, da, db, w, h, dist, sig_k, sig_k1, top_w, total_w, top_h, total_h)``.
        """
        bound, two_bound, mw, mh, md, sw, sh, shift = st
        top_w, total_w = softmax_stats(uw, r, bw, stride, nbins)
        top_h, total_h = softmax_stats(uh, r, bh, stride, nbins)
        cx = zero
        cy = zero
        x0 = -bound
        y0 = -bound
        x1 = bound
        y1 = bound
        k = 0
        for q in range(nbins):
            # knot q + 1, as the twin's cumulative sum builds it (the last pinned to B)
            cx += mw + sw * (math.exp(uw[r, bw + q * stride] - top_w) / total_w)
            cy += mh + sh * (math.exp(uh[r, bh + q * stride] - top_h) / total_h)
            if q + 1 == nbins:
                x1 = bound
                y1 = bound
                break
            x1 = -bound + two_bound * cx
            y1 = -bound + two_bound * cy
            # a knot opens its bin: v on knot q + 1 lies in bin q + 1 (the twin's linear scan)
            if v >= (y1 if inverse else x1):
                x0 = x1
                y0 = y1
                k = q + 1
            else:
                break
        d_k, sig_k = knot_derivative(ud, r, bd, stride, k, nbins, md, shift)
        d_k1, sig_k1 = knot_derivative(ud, r, bd, stride, k + 1, nbins, md, shift)
        w = x1 - x0
        h = y1 - y0
        lo = y0 if inverse else x0
        hi = y1 if inverse else x1
        left = v - lo <= hi - v
        if left:
            return (k, left, one, x0, y0, d_k, d_k1, w, h, v - lo, sig_k, sig_k1, top_w, total_w, top_h, total_h)
        return (k, left, -one, x1, y1, d_k1, d_k, w, h, hi - v, sig_k, sig_k1, top_w, total_w, top_h, total_h)

    @device_function
    def partials(xi, s, da, db):
        """``(R, f_x, ld, R_s, R_da, R_db, ld_xi, ld_s, ld_da, ld_db)``, as the twin's ``_partials_numba``."""
        t = xi * (one - xi)
        u = one - xi
        delta = da + db - two * s
        inv_d = one / (s + delta * t)
        p = s * xi * xi + da * t
        q = db * xi * xi + two * s * t + da * u * u
        rr = s * inv_d
        one_m_2t = one - two * t
        return (p * inv_d, q * rr * rr, math.log(q) + two * math.log(rr),
                (xi * xi - p * inv_d * one_m_2t) * inv_d,
                t * (s * u * u + db * t) * inv_d * inv_d,
                -p * t * inv_d * inv_d,
                two * (db * xi + s * (one - two * xi) - da * u) / q - two * delta * (one - two * xi) * inv_d,
                two / s + two * t / q - two * one_m_2t * inv_d,
                u * u / q - two * t * inv_d,
                xi * xi / q - two * t * inv_d)

    @device_function
    def solve(dist, h, s, da, db):
        """The inverse's anchored ``xi``: the root ``2c / (-b - sqrt(b^2 - 4ac))``, which does not cancel."""
        delta = da + db - two * s
        qa = h * (s - da) + dist * delta
        qb = h * da - dist * delta
        qc = -s * dist
        disc = qb * qb - two * two * qa * qc
        if disc < zero:
            disc = zero
        return two * qc / (-qb - math.sqrt(disc))

    @device_function
    def softmax_backward(u, gu, r, base, stride, nbins, top, total, k, g_left, g_right, two_bound, scale):
        """From the gradients of bin ``k``'s two knots to those of the ``K`` unnormalized sizes (into ``gu``)."""
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
            mean += (math.exp(u[r, base + i * stride] - top) / total) * g
        for i in range(nbins):
            g = zero
            if i < k:
                g += g_left
            if i <= k:
                g += g_right
            p = math.exp(u[r, base + i * stride] - top) / total
            gu[r, base + i * stride] = scale * p * two_bound * (g - mean)

    @device_function
    def zero_params(gu, r, base, stride, count):
        for q in range(count):
            gu[r, base + q * stride] = zero

    @device_function
    def rqs_forward(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st):
        """``(y, log dy/dx)`` of one element; the identity (and 0) outside ``[-B, B]`` or at NaN."""
        bound = st[0]
        if not (v >= -bound and v <= bound):
            return v, zero
        b = locate(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st, False)
        w, h = b[7], b[8]
        q = partials(b[9] / w, h / w, b[5], b[6])
        return b[4] + b[2] * h * q[0], q[2]

    @device_function
    def rqs_inverse(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st):
        """``(x, log dx/dy)`` of one element (``v`` is ``y``)."""
        bound = st[0]
        if not (v >= -bound and v <= bound):
            return v, zero
        b = locate(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st, True)
        w, h = b[7], b[8]
        s = h / w
        xi = solve(b[9], h, s, b[5], b[6])
        q = partials(xi, s, b[5], b[6])
        return b[3] + b[2] * xi * w, -q[2]

    @device_function
    def rqs_forward_grad(v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st, gy, gld, guw, guh, gud):
        """VJP of :func:`rqs_forward`: writes the ``3K - 1`` parameter gradients, returns ``dL/dx``."""
        bound, two_bound, sw, sh = st[0], st[1], st[5], st[6]
        if not (v >= -bound and v <= bound):
            zero_params(guw, r, bw, stride, nbins)
            zero_params(guh, r, bh, stride, nbins)
            zero_params(gud, r, bd, stride, nbins - 1)
            return gy
        k, left, sigma, xa, ya, da, db, w, h, dist, sig_k, sig_k1, top_w, total_w, top_h, total_h = locate(
            v, uw, uh, ud, r, bw, bh, bd, stride, nbins, st, False)
        s = h / w
        xi = dist / w
        big_r, f_x, _, r_s, r_da, r_db, ld_xi, ld_s, ld_da, ld_db = partials(xi, s, da, db)
        # the twin's _param_grads_numba
        sg = sigma * gy
        g_xi = sg * w * f_x + gld * ld_xi
        g_s = sg * h * r_s + gld * ld_s
        g_da = sg * h * r_da + gld * ld_da
        g_db = sg * h * r_db + gld * ld_db
        g_sh = g_s / w + sg * big_r
        g_xa = sigma * (g_xi * (xi - one) + g_s * s) / w
        g_xb = -sigma * (g_xi * xi + g_s * s) / w
        g_ya = gy - sigma * g_sh
        g_yb = sigma * g_sh
        if left:
            softmax_backward(uw, guw, r, bw, stride, nbins, top_w, total_w, k, g_xa, g_xb, two_bound, sw)
            softmax_backward(uh, guh, r, bh, stride, nbins, top_h, total_h, k, g_ya, g_yb, two_bound, sh)
            g_dk = g_da
            g_dk1 = g_db
        else:
            softmax_backward(uw, guw, r, bw, stride, nbins, top_w, total_w, k, g_xb, g_xa, two_bound, sw)
            softmax_backward(uh, guh, r, bh, stride, nbins, top_h, total_h, k, g_yb, g_ya, two_bound, sh)
            g_dk = g_db
            g_dk1 = g_da
        # d_{j+1} comes from ud_j; the end derivatives d_0 = d_K = 1 are constants
        zero_params(gud, r, bd, stride, nbins - 1)
        if k >= 1:
            gud[r, bd + (k - 1) * stride] = g_dk * sig_k
        if k < nbins - 1:
            gud[r, bd + k * stride] = g_dk1 * sig_k1
        return sigma * g_xi / w

    # ------------------------------------------------------------ element-wise kernels (the references' arrays)
    @jit
    def elements(x, uw, uh, ud, nbins, st, inverse, y, ld):
        # x, y, ld: (N,); uw, uh: (N, K); ud: (N, K - 1)
        t = cuda.grid(1)
        if t < x.shape[0]:
            if inverse:
                out, l = rqs_inverse(x[t], uw, uh, ud, t, 0, 0, 0, 1, nbins, st)
            else:
                out, l = rqs_forward(x[t], uw, uh, ud, t, 0, 0, 0, 1, nbins, st)
            y[t] = out
            ld[t] = l

    @jit
    def elements_grad(x, uw, uh, ud, nbins, st, gy, gld, gx, guw, guh, gud):
        t = cuda.grid(1)
        if t < x.shape[0]:
            gx[t] = rqs_forward_grad(x[t], uw, uh, ud, t, 0, 0, 0, 1, nbins, st, gy[t], gld[t], guw, guh, gud)

    # ------------------------------------------------------------ spline coupling
    @jit
    def coupling_transform(inp, out, net, lde, b, nbins, st, inverse):
        # one thread per (row, transformed coordinate); the coordinate's 3K - 1 parameters are contiguous
        t = cuda.grid(1)
        nb = b.size
        if t < inp.shape[0] * nb:
            i = t // nb
            j = t - i * nb
            per = 3 * nbins - 1
            c = b[j]
            base = j * per
            if inverse:      # sampling: y_b = g^-1(x_b)
                o, l = rqs_inverse(inp[i, c], net, net, net, i, base, base + nbins, base + 2 * nbins, 1, nbins, st)
            else:            # density: x_b = g(y_b)
                o, l = rqs_forward(inp[i, c], net, net, net, i, base, base + nbins, base + 2 * nbins, 1, nbins, st)
            out[i, c] = o
            lde[i, j] = l

    @jit
    def coupling_finish(inp, out, lde, ld, a, nb):
        # pass-through columns and the row's log-det, summed in a register in column order
        i = cuda.grid(1)
        if i < inp.shape[0]:
            for j in range(a.size):
                out[i, a[j]] = inp[i, a[j]]
            total = zero
            for j in range(nb):
                total += lde[i, j]
            ld[i] += total

    @jit
    def coupling_grad(y, gx, gld, net, gnet, gy, b, nbins, st):
        # y the pass input, gx = dL/dx; writes gnet's 3K - 1 entries of the coordinate and the direct dL/dy_b
        t = cuda.grid(1)
        nb = b.size
        if t < y.shape[0] * nb:
            i = t // nb
            j = t - i * nb
            per = 3 * nbins - 1
            c = b[j]
            base = j * per
            gy[i, c] = rqs_forward_grad(y[i, c], net, net, net, i, base, base + nbins, base + 2 * nbins, 1, nbins,
                                        st, gx[i, c], gld[i], gnet, gnet, gnet)

    # ------------------------------------------------------------ autoregressive spline (MADE: parameter, feature)
    @jit
    def maf_transform(y, x, net, lde, nbins, st):
        t = cuda.grid(1)
        d = y.shape[1]
        if t < y.shape[0] * d:
            i = t // d
            j = t - i * d
            o, l = rqs_forward(y[i, j], net, net, net, i, j, nbins * d + j, 2 * nbins * d + j, d, nbins, st)
            x[i, j] = o
            lde[i, j] = l

    @jit
    def maf_grad(y, gx, gld, net, gnet, direct, nbins, st):
        t = cuda.grid(1)
        d = y.shape[1]
        if t < y.shape[0] * d:
            i = t // d
            j = t - i * d
            direct[i, j] = rqs_forward_grad(y[i, j], net, net, net, i, j, nbins * d + j, 2 * nbins * d + j, d, nbins,
                                            st, gx[i, j], gld[i], gnet, gnet, gnet)

    @jit
    def add_direct(direct, gy):
        # the direct path y -> x, added to the network's input gradient
        t = cuda.grid(1)
        d = gy.shape[1]
        if t < gy.shape[0] * d:
            i = t // d
            j = t - i * d
            gy[i, j] += direct[i, j]

    @jit
    def maf_sample_feature(x, y, net, lde, feature, nbins, st):
        i = cuda.grid(1)
        if i < x.shape[0]:
            d = x.shape[1]
            o, l = rqs_inverse(x[i, feature], net, net, net, i, feature, nbins * d + feature,
                               2 * nbins * d + feature, d, nbins, st)
            y[i, feature] = o
            lde[i, feature] = l

    @jit
    def row_sums(lde, ld, count):
        i = cuda.grid(1)
        if i < ld.shape[0]:
            total = zero
            for j in range(count):
                total += lde[i, j]
            ld[i] += total

    return SimpleNamespace(elements=elements, elements_grad=elements_grad, coupling_transform=coupling_transform,
                           coupling_finish=coupling_finish, coupling_grad=coupling_grad, maf_transform=maf_transform,
                           maf_grad=maf_grad, add_direct=add_direct, maf_sample_feature=maf_sample_feature,
                           row_sums=row_sums)


def _items(kernel, count, *args):
    """Launch ``kernel`` with one thread per item of ``count`` (nothing when 0)."""
    if count:
        threads = geometry().threads
        launch(kernel, blocks(count, threads), threads)(*args)


# ---------------------------------------------------------------- element-wise (the references' arguments)

def _elements(inverse, v, uw, uh, ud, sp, out, ld):
    n = v.size
    bins = tuple(uw.shape)[-1]
    k = _kernels(v.dtype)
    _items(k.elements, n, v.reshape(n), uw.reshape(n, bins), uh.reshape(n, bins), ud.reshape(n, bins - 1), bins,
           spline_settings(sp, bins, v.dtype), inverse, out.reshape(n), ld.reshape(n))


def rqs_forward_cuda(x, uw, uh, ud, bound, min_width, min_height, min_derivative, y, ld):
    """``y = spline(x)``, ``ld = log|dy/dx|`` per element; see :func:`nflow_np.kernels.spline.rqs_forward_numpy`.

    Device arrays, C-contiguous: ``x``, ``y``, ``ld`` of one shape ``s``, ``uw``, ``uh`` of ``s + (K,)``,
    ``ud`` of ``s + (K - 1,)``.
    """
    _elements(False, x, uw, uh, ud, (bound, min_width, min_height, min_derivative), y, ld)


def rqs_inverse_cuda(y, uw, uh, ud, bound, min_width, min_height, min_derivative, x, ld):
    """``x = spline^-1(y)``, ``ld = log|dx/dy|``; see :func:`nflow_np.kernels.spline.rqs_inverse_numpy`."""
    _elements(True, y, uw, uh, ud, (bound, min_width, min_height, min_derivative), x, ld)


def rqs_forward_backward_cuda(x, uw, uh, ud, bound, min_width, min_height, min_derivative, gy, gld, gx, guw, guh,
                              gud):
    """VJP of :func:`rqs_forward_cuda`; see :func:`nflow_np.kernels.spline.rqs_forward_backward_numpy`."""
    n = x.size
    bins = tuple(uw.shape)[-1]
    sp = (bound, min_width, min_height, min_derivative)
    _items(_kernels(x.dtype).elements_grad, n, x.reshape(n), uw.reshape(n, bins), uh.reshape(n, bins),
           ud.reshape(n, bins - 1), bins, spline_settings(sp, bins, x.dtype), gy.reshape(n), gld.reshape(n),
           gx.reshape(n), guw.reshape(n, bins), guh.reshape(n, bins), gud.reshape(n, bins - 1))


# ---------------------------------------------------------------- spline coupling
# ``scratch``: an (n, >= nb) device buffer for the per-element log-dets (the reference's ``4 x n x nb`` scratch
# holds gathered copies the device reads in place); ``sp``: the four settings on the host.

def _coupling_pass(inverse, theta, off, widths, act, bins, sp, a, b, inp, out, ld, cond, hid, net, scratch, work):
    gather_cuda(inp, a, cond)
    mlp_forward_cuda(theta, off, widths, act, cond, hid, net, work)
    k = _kernels(inp.dtype)
    n, nb = inp.shape[0], b.size
    _items(k.coupling_transform, n * nb, inp, out, net, scratch, b, int(bins), spline_settings(sp, bins, inp.dtype),
           inverse)
    launch_rows(k.coupling_finish, n, inp, out, scratch, ld, a, nb)


def spline_coupling_inverse_cuda(theta, off, widths, act, bins, sp, a, b, y, x, ld, cond, hid, net, scratch,
                                 work=None):
    """Density direction; see :func:`nflow_np.kernels.coupling.spline_coupling_inverse_numpy`."""
    _coupling_pass(False, theta, off, widths, act, bins, sp, a, b, y, x, ld, cond, hid, net, scratch, work)


def spline_coupling_forward_cuda(theta, off, widths, act, bins, sp, a, b, x, y, ld, cond, hid, net, scratch,
                                 work=None):
    """Sampling direction; see :func:`nflow_np.kernels.coupling.spline_coupling_forward_numpy`."""
    _coupling_pass(True, theta, off, widths, act, bins, sp, a, b, x, y, ld, cond, hid, net, scratch, work)


def spline_coupling_inverse_backward_cuda(theta, off, widths, act, bins, sp, a, b, y, gx, gld, cond, hid, net, gy,
                                          gtheta, gnet, gcond, d1, d2, work=None):
    """VJP of :func:`spline_coupling_inverse_cuda`, ``y`` its input; see the NumPy reference.

    The reference reads its pass's inputs from its scratch; here they are read from ``y`` itself.
    """
    k = _kernels(y.dtype)
    n = y.shape[0]
    _items(k.coupling_grad, n * b.size, y, gx, gld, net, gnet, gy, b, int(bins), spline_settings(sp, bins, y.dtype))
    mlp_backward_cuda(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2, work)
    launch_rows(_coupling_kernels(y.dtype)[2], n, gx, gcond, a, gy)


# ---------------------------------------------------------------- autoregressive spline

def spline_maf_inverse_cuda(theta, off, widths, act, bins, sp, y, x, ld, hid, net, scratch, work=None):
    """Density direction; see :func:`nflow_np.kernels.autoregressive.spline_maf_inverse_numpy` (``scratch``: (n, d))."""
    mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
    k = _kernels(y.dtype)
    n, d = y.shape
    _items(k.maf_transform, n * d, y, x, net, scratch, int(bins), spline_settings(sp, bins, y.dtype))
    launch_rows(k.row_sums, n, scratch, ld, d)


def spline_maf_inverse_backward_cuda(theta, off, widths, act, bins, sp, y, gx, gld, hid, net, scratch, gy, gtheta,
                                     gnet, d1, d2, work=None):
    """VJP of :func:`spline_maf_inverse_cuda`; ``scratch`` ((n, d)) holds the direct gradient meanwhile."""
    k = _kernels(y.dtype)
    n, d = y.shape
    _items(k.maf_grad, n * d, y, gx, gld, net, gnet, scratch, int(bins), spline_settings(sp, bins, y.dtype))
    mlp_backward_cuda(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2, work)
    _items(k.add_direct, n * d, scratch, gy)


def spline_maf_forward_cuda(theta, off, widths, act, bins, sp, generation, x, y, ld, hid, net, scratch, work=None):
    """Sampling, ``y_i = g_i^-1(x_i)`` in ``generation`` order (host ints); see the NumPy reference."""
    k = _kernels(x.dtype)
    n, d = x.shape
    st = spline_settings(sp, bins, x.dtype)
    fill_cuda(y, 0.0)
    for feature in np.asarray(generation).tolist():
        # feature i's parameters depend on the features generated before it only: one full pass fixes it
        mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
        launch_rows(k.maf_sample_feature, n, x, y, net, scratch, int(feature), int(bins), st)
    launch_rows(k.row_sums, n, scratch, ld, d)
