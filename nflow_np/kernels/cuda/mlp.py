"""CUDA twin of :mod:`nflow_np.kernels.mlp`: dense networks on a flat parameter vector, forward and backward.

One tiled shared-memory kernel computes every product, in three variants:

- ``nn``: ``out = act(h @ W + b)``, the forward layer with bias and activation fused;
- ``nt``: ``back = (delta @ W.T) * act'(h)``, the backward delta with the activation's
  derivative fused (read through the activation's output ``h``, as on the CPU);
- ``tn``: ``[gW; gb] = [h, 1].T @ delta``: the weight *and* bias gradients of a layer in
  one product, as ``W`` then ``b`` sit next to each other in ``theta``, so an extra input
  column of ones yields ``gb`` as the last row. The sum runs over the batch, so it is
  split over blocks (``split-K``) whose partial products are added by
  :func:`~.reduce.reduce_partials` in a fixed order: deterministic, no atomics.

A block computes a ``BM x BN`` output tile, staging ``BK``-deep slices of both
operands in shared memory; each thread keeps a ``TM x TN`` sub-tile in registers.
Threads own strided rows and columns (``ty + i * TY``, ``tx + j * TX``), so
neighbouring threads read neighbouring shared-memory words and write neighbouring
output columns. The staged tiles are padded by one column against bank conflicts
when a transposed operand is stored.

Host functions ``mlp_forward_cuda`` / ``mlp_backward_cuda`` take the arguments of
their Numba twins (``theta``, ``hid``... as device arrays; ``widths`` on the host); the
reference of both is :class:`nflow_np.nn.MLP`.
"""

from types import SimpleNamespace

from ..residual import RESIDUAL
from .device import blocks, cuda, dummy, family, geometry, jit, launch, scratch_or_default
from .reduce import reduce_partials
from .scalar import activate, activation_grad

__all__ = ["matmul_bias_act_cuda",
           "backward_product_cuda", "weight_grads_cuda", "mlp_forward_cuda", "mlp_backward_cuda",
           "multiprocessors"]

NO_ACTIVATION = -1
FORWARD, BACKWARD, WEIGHTS = range(3)


@family
def _products(ft, geom):
    bm, bn, bk, tm, tn = geom.tile
    ty_count, tx_count = bm // tm, bn // tn
    threads = tx_count * ty_count
    # staged tiles padded by a column (shapes must be constants here, not expressions in the kernel)
    pad_m, pad_n = bm + 1, bn + 1
    zero, one = ft(0), ft(1)

    def build(trans_a, trans_b, epilogue):
        @jit
        def product(a, b, c, bias, h, act, split, augment):
            # C (rows x cols) = A @ B over depth, A = a.T if trans_a else a, B likewise; block z sums the
            # depth slice [z * split, (z + 1) * split) into c[z]
            tx = cuda.threadIdx.x
            ty = cuda.threadIdx.y
            tid = ty * tx_count + tx
            row0 = cuda.blockIdx.x * bm
            col0 = cuda.blockIdx.y * bn
            z = cuda.blockIdx.z
            if trans_a:
                n_rows = a.shape[1] + augment
                depth = a.shape[0]
            else:
                n_rows = a.shape[0] + augment
                depth = a.shape[1]
            n_cols = b.shape[0] if trans_b else b.shape[1]
            k_stop = min(depth, (z + 1) * split)
            sa = cuda.shared.array((bk, pad_m), ft)
            sb = cuda.shared.array((bk, pad_n), ft)
            acc = cuda.local.array((tm, tn), ft)
            ra = cuda.local.array(tm, ft)
            rb = cuda.local.array(tn, ft)
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] = zero
            for k0 in range(z * split, k_stop, bk):
                for e in range(tid, bm * bk, threads):
                    # consecutive threads read consecutive addresses of the operand as stored
                    if trans_a:
                        kk = e // bm
                        ii = e % bm
                    else:
                        ii = e // bk
                        kk = e % bk
                    r = row0 + ii
                    p = k0 + kk
                    v = zero
                    if p < k_stop and r < n_rows:
                        if augment and r == n_rows - 1:
                            v = one
                        elif trans_a:
                            v = a[p, r]
                        else:
                            v = a[r, p]
                    sa[kk, ii] = v
                for e in range(tid, bk * bn, threads):
                    if trans_b:
                        jj = e // bk
                        kk = e % bk
                    else:
                        kk = e // bn
                        jj = e % bn
                    p = k0 + kk
                    q = col0 + jj
                    v = zero
                    if p < k_stop and q < n_cols:
                        if trans_b:
                            v = b[q, p]
                        else:
                            v = b[p, q]
                    sb[kk, jj] = v
                cuda.syncthreads()
                for kk in range(bk):
                    for i in range(tm):
                        ra[i] = sa[kk, ty + i * ty_count]
                    for j in range(tn):
                        rb[j] = sb[kk, tx + j * tx_count]
                    for i in range(tm):
                        for j in range(tn):
                            acc[i, j] += ra[i] * rb[j]
                cuda.syncthreads()
            for i in range(tm):
                r = row0 + ty + i * ty_count
                if r < n_rows:
                    for j in range(tn):
                        q = col0 + tx + j * tx_count
                        if q < n_cols:
                            v = acc[i, j]
                            if epilogue == FORWARD:
                                v = activate(v + bias[q], act, zero)
                            elif epilogue == BACKWARD and act >= 0:
                                v = v * activation_grad(h[r, q], act, zero, one)
                            c[z, r, q] = v

        return product

    return SimpleNamespace(nn=build(False, False, FORWARD), nt=build(False, True, BACKWARD),
                           tn=build(True, False, WEIGHTS))


_sm_count = []


def multiprocessors():
    """Streaming multiprocessors of the current device (2 under the simulator)."""
    if not _sm_count:
        from .device import SIMULATED
        _sm_count.append(2 if SIMULATED else int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
    return _sm_count[0]


def _launch(kind, a, b, c, bias, h, act, split, augment, rows, cols, splits):
    bm, bn, _, tm, tn = geometry().tile
    kernel = getattr(_products(a.dtype), kind)
    launch(kernel, (blocks(rows, bm), blocks(cols, bn), splits), (bn // tn, bm // tm))(a, b, c, bias, h, act, split,
                                                                                       augment)


def matmul_bias_act_cuda(inp, w, bias, out, act=NO_ACTIVATION):
    """``out = act(inp @ w + bias)`` for device arrays ``inp`` (n, k), ``w`` (k, m), ``bias`` (m,), ``out`` (n, m)."""
    n, m = out.shape
    if n:
        _launch("nn", inp, w, out.reshape(1, n, m), bias, dummy(inp.dtype, 2), int(act), max(1, w.shape[0]), 0,
                n, m, 1)


def backward_product_cuda(delta, w, out, h=None, act=NO_ACTIVATION):
    """``out = (delta @ w.T) * act'(h)`` (no factor when ``act`` is -1) for ``delta`` (n, m), ``w`` (k, m)."""
    n, k = out.shape
    if n:
        _launch("nt", delta, w, out.reshape(1, n, k), dummy(delta.dtype), dummy(delta.dtype, 2) if h is None else h,
                int(act) if h is not None else NO_ACTIVATION, max(1, w.shape[1]), 0, n, k, 1)


def weight_grads_cuda(inp, delta, grad, work=None):
    """``grad = [inp, 1].T @ delta``, flat: the gradient of ``W`` (k x m, row-major) then of ``b`` (m)."""
    n, k = inp.shape
    m = delta.shape[1]
    bm, bn, bk = geometry().tile[:3]
    tiles = blocks(k + 1, bm) * blocks(m, bn)
    # enough blocks for every multiprocessor to hold a few, each summing at least one staged slice
    splits = max(1, min(blocks(n, bk), (4 * multiprocessors()) // tiles))
    split = blocks(blocks(n, splits), bk) * bk
    splits = blocks(n, split)
    if splits == 1:
        _launch("tn", inp, delta, grad.reshape(1, k + 1, m), dummy(inp.dtype), dummy(inp.dtype, 2), NO_ACTIVATION,
                max(1, split), 1, k + 1, m, 1)
        return
    partial = scratch_or_default(work).get("products", splits * (k + 1) * m, inp.dtype)
    _launch("tn", inp, delta, partial.reshape(splits, k + 1, m), dummy(inp.dtype), dummy(inp.dtype, 2),
            NO_ACTIVATION, split, 1, k + 1, m, splits)
    reduce_partials(partial.reshape(splits, (k + 1) * m), grad)


def _layers(theta, off, widths):
    """``(fan_in, fan_out, W view, b view, offset of W)`` per layer of a network stored from ``off``."""
    out, p = [], int(off)
    for fi, fo in zip(widths[:-1], widths[1:]):
        fi, fo = int(fi), int(fo)
        out.append((fi, fo, theta[p:p + fi * fo].reshape(fi, fo), theta[p + fi * fo:p + fi * fo + fo], p))
        p += fi * fo + fo
    return out


def mlp_forward_cuda(theta, off, widths, act, inp, hid, out, work=None):
    """``out = net(inp)``, hidden activations into ``hid``; see :func:`nflow_np.kernels.mlp.mlp_forward_numba`
    (reference: :meth:`nflow_np.nn.MLP.forward_with_cache`). An activation code of ``RESIDUAL`` and up runs a
    residual network (:mod:`.residual`)."""
    if act >= RESIDUAL:
        from .residual import residual_forward_cuda
        return residual_forward_cuda(theta, off, widths, act - RESIDUAL, inp, hid, out, work)
    n = inp.shape[0]
    layers = _layers(theta, off, widths)
    h, hp = inp, 0
    for index, (fi, fo, w, b, _) in enumerate(layers):
        if index == len(layers) - 1:
            matmul_bias_act_cuda(h, w, b, out, NO_ACTIVATION)
        else:
            block = hid[hp:hp + n * fo].reshape(n, fo)
            hp += n * fo
            matmul_bias_act_cuda(h, w, b, block, act)
            h = block


def mlp_backward_cuda(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2, work=None):
    """``gin = dL/dinp`` and the weight gradients into ``gtheta``; see :func:`nflow_np.kernels.mlp.mlp_backward_numba`
    (reference: :meth:`nflow_np.nn.MLP.backward`); a residual network for ``act >= RESIDUAL``."""
    if act >= RESIDUAL:
        from .residual import residual_backward_cuda
        return residual_backward_cuda(theta, off, widths, act - RESIDUAL, inp, hid, gout, gin, gtheta, d1, d2, work)
    n = inp.shape[0]
    layers = _layers(theta, off, widths)
    inputs, hp = [inp], 0
    for fi, fo, _, _, _ in layers[:-1]:
        inputs.append(hid[hp:hp + n * fo].reshape(n, fo))
        hp += n * fo
    delta, buffers = gout, (d1, d2)
    for index in range(len(layers) - 1, -1, -1):
        fi, fo, w, _, p = layers[index]
        weight_grads_cuda(inputs[index], delta, gtheta[p:p + fi * fo + fo], work)
        if index:
            back = buffers[index % 2][:n * fi].reshape(n, fi)
            backward_product_cuda(delta, w, back, inputs[index], act)
            delta = back
        else:
            backward_product_cuda(delta, w, gin)
