"""The Numba runner of a :class:`~nflow_np.kernels.plan.Program`: small loops over layers that call one compiled
entry per layer kind and pass (:mod:`.entries`) through a table of function addresses.

Why addresses: a loop that switches over every layer kind must compile every
kind before it can run any, which made a new user wait over a minute for a
first result. Here the loops contain no layer code, so they compile once per
dtype in well under a second, and a flow pays only for the entries of the
layers it has and the passes it runs: ``log_prob`` compiles density entries,
``sample`` sampling entries, training adds the backward ones.

The loops are compiled with ``nogil=True``; :class:`~nflow_np.kernels.plan.Program`
splits a large batch over threads itself, which costs nothing to compile
(Numba's ``parallel=True`` took seconds per loop).

Importing this module imports Numba and compiles nothing.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import elementwise as _elementwise
from . import optim as _optim
from . import scalar as _scalar
from .entries import BACKWARD, DENSITY, ENTRIES, HEAD, PASSES, SAMPLING, _block, _jit, _jit_nogil, _row, \
    entry_address
from .program import BASE_NORMAL, N_FIELDS, N_LAYOUT, W_BASE, W_BASEC, W_CTX, W_CTXW, W_G0, W_GLD, W_LD, W_PARAMS, \
    W_Z

_normal_log_prob = _elementwise.normal_log_prob_numba
_uniform_log_prob = _elementwise.uniform_log_prob_numba
_adam_step = _optim.adam_step_numba
_average_step = _optim.average_step_numba
_average_restart = _optim.average_restart_numba
_loss_diverged = _scalar.loss_diverged
_loss_level = _scalar.loss_level
ACCEPTED = _optim.ACCEPTED
HALF_LOG_2PI = _elementwise.HALF_LOG_2PI


# ====================================================================== calling an entry by address

def _data_pointer(context, builder, array_type, value):
    return context.make_array(array_type)(context, builder, value).data


@intrinsic
def _call_layer(typingctx, address, meta, clamps, theta, gtheta, w, w_size, layer, n, d):
    """Call the entry at ``address`` (an int64) with the arrays' data pointers and the integers as they are."""
    sig = types.void(address, meta, clamps, theta, gtheta, w, w_size, layer, n, d)

    def codegen(context, builder, signature, args):
        values = [_data_pointer(context, builder, signature.args[k], args[k]) for k in range(1, 6)] + list(args[6:])
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), values)
        return context.get_dummy_value()

    return sig, codegen


LOOPS = ("log_prob_rows", "sample_rows", "nll_grad", "train_epoch")
LOOP = -1                     # the "pass" of a loop's key: (index in LOOPS, LOOP, dtype name)


def compile_loop(index, dtype):
    """Compile (or load from the disk cache) loop ``LOOPS[index]`` for ``dtype``, by a call that runs no layer."""
    ft = np.dtype(dtype)
    table = np.zeros((0, PASSES), np.int64)
    meta = pack_meta(np.zeros((0, N_FIELDS), np.int64), np.zeros(1, np.int64), np.zeros(N_LAYOUT, np.int64), 1)
    clamps, theta, vec = np.zeros(0, ft), np.zeros(1, ft), np.zeros(1, ft)
    rows, ctx = np.zeros((0, 1), ft), np.zeros((0, 0), ft)
    name = LOOPS[index]
    if name == "log_prob_rows":
        log_prob_rows(table, meta, clamps, theta, rows, ctx, vec, vec, 1, 0, 0)
    elif name == "sample_rows":
        sample_rows(table, meta, clamps, theta, rows, ctx, rows, vec, vec, 1, 0, 0)
    elif name == "nll_grad":
        nll_grad(table, meta, clamps, theta, theta, rows, ctx, vec, vec)
    else:
        train_epoch(table, meta, clamps, theta, theta, theta, rows, ctx, np.zeros(0, np.int64), 1, vec, vec, vec,
                    vec, np.zeros(7), np.zeros(2, np.int64), np.zeros(0), np.zeros(3), vec, vec, np.zeros(2))


def compile_key(key):
    """Compile (or load from the disk cache) what ``key`` names: ``(entry name, pass, dtype name)`` for an entry,
    ``(index in LOOPS, LOOP, dtype name)`` for a loop."""
    index, pass_, dtype = key
    if pass_ == LOOP:
        compile_loop(index, dtype)
    else:
        entry_address(index, pass_, dtype)


def pack_meta(fields, idata, layout, theta_size, networks=(0, 0, 0, 0)):
    """The ``meta`` array every entry reads (see :mod:`.entries`); ``networks`` are the addresses of the compiled
    network forward and backward passes, row-major and by unit."""
    n_layers = fields.shape[0]
    head = np.array([n_layers, HEAD + fields.size + idata.size + layout.size, theta_size, idata.size, *networks],
                    np.int64)
    return np.concatenate([head, fields.reshape(-1), idata, layout]).astype(np.int64)


# ====================================================================== the loops over layers

@_jit
def _layout(meta):
    start = HEAD + N_FIELDS * meta[0] + meta[3]
    return meta[start:]


@_jit
def _base_log_prob(layout, theta, z, out):
    """``out += log p_base(z)`` per row: the standard normal, or the uniform box whose constants ``theta`` holds."""
    if layout[W_BASE] == BASE_NORMAL:
        _normal_log_prob(z, out)
    else:
        _uniform_log_prob(z, theta[layout[W_BASEC]:], out)


@_jit
def _run(table, pass_, meta, clamps, theta, gtheta, w, n, d):
    """Every layer's ``pass_`` over one chunk of ``n`` rows, in the pass's order."""
    n_layers = meta[0]
    for step in range(n_layers):
        layer = n_layers - 1 - step if pass_ != DENSITY else step
        _call_layer(table[layer, pass_], meta, clamps, theta, gtheta, w, w.size, layer, n, d)


@_jit
def _load_rows(src, rows_from, m, w, n_offset_block, width):
    """Copy ``src[rows_from:rows_from + m]`` into a workspace block."""
    dst = _block(w, m, n_offset_block, width)
    for i in range(m):
        for j in range(width):
            dst[i, j] = src[rows_from + i, j]


@_jit_nogil
def log_prob_rows(table, meta, clamps, theta, x, ctx, out, w, chunk, start, stop):
    """``out[start:stop] = log p(x | ctx)`` for those rows, ``chunk`` rows at a time on workspace ``w``."""
    d = x.shape[1]
    layout = _layout(meta)
    n_layers = meta[0]
    for first in range(start, stop, chunk):
        m = min(chunk, stop - first)
        _load_rows(x, first, m, w, layout[W_Z], d)
        _load_rows(ctx, first, m, w, layout[W_CTX], layout[W_CTXW])
        ld = _row(w, m, layout[W_LD])
        ld[:] = 0.0
        # theta as gtheta: no backward pass follows, so the frames keep no caches (frames._scoring)
        _run(table, DENSITY, meta, clamps, theta, theta, w, m, d)
        for i in range(m):
            out[first + i] = ld[i]
        _base_log_prob(layout, theta, _block(w, m, layout[W_Z] + n_layers * d, d), out[first:first + m])


@_jit_nogil
def sample_rows(table, meta, clamps, theta, z, ctx, x, log_prob, w, chunk, start, stop):
    """``x = forward(z)`` and ``log_prob = log p(x)`` for rows ``start:stop`` of base points ``z``."""
    d = z.shape[1]
    layout = _layout(meta)
    n_layers = meta[0]
    for first in range(start, stop, chunk):
        m = min(chunk, stop - first)
        _load_rows(z, first, m, w, layout[W_Z] + n_layers * d, d)
        _load_rows(ctx, first, m, w, layout[W_CTX], layout[W_CTXW])
        ld = _row(w, m, layout[W_LD])
        ld[:] = 0.0
        _run(table, SAMPLING, meta, clamps, theta, theta, w, m, d)      # theta as gtheta: as in log_prob_rows
        z0 = _block(w, m, layout[W_Z], d)
        for i in range(m):
            for j in range(d):
                x[first + i, j] = z0[i, j]
            log_prob[first + i] = -ld[i]
        _base_log_prob(layout, theta, z[first:first + m], log_prob[first:first + m])


@_jit
def _nll_grad(table, meta, clamps, theta, gtheta, w, n, d):
    """Mean NLL of the rows in ``Z_0`` and its gradient (w.r.t. ``theta``, unmasked) into ``gtheta``."""
    layout = _layout(meta)
    n_layers = meta[0]
    ld = _row(w, n, layout[W_LD])
    ld[:] = 0.0
    _run(table, DENSITY, meta, clamps, theta, gtheta, w, n, d)
    z = _block(w, n, layout[W_Z] + n_layers * d, d)
    gld = _row(w, n, layout[W_GLD])
    gout = _block(w, n, layout[W_G0], d)
    total = 0.0
    if layout[W_BASE] == BASE_NORMAL:
        for i in range(n):
            sq = 0.0
            for j in range(d):
                sq += z[i, j] * z[i, j]
                gout[i, j] = z[i, j] / n
            total += ld[i] - 0.5 * sq - d * HALF_LOG_2PI
            gld[i] = -1.0 / n
    else:
        # the uniform box: a constant inside (-inf outside), whose gradient with respect to z is 0
        gld[:] = 0.0
        _uniform_log_prob(z, theta[layout[W_BASEC]:], gld)
        for i in range(n):
            for j in range(d):
                gout[i, j] = 0.0
            total += ld[i] + gld[i]
            gld[i] = -1.0 / n
    _run(table, BACKWARD, meta, clamps, theta, gtheta, w, n, d)
    return -total / n


@_jit_nogil
def nll_grad(table, meta, clamps, theta_eff, pmask, x, ctx, w, gtheta):
    """Mean NLL of rows ``x`` (given ``ctx``) and its gradient with respect to the unmasked parameters."""
    n, d = x.shape
    layout = _layout(meta)
    _load_rows(x, 0, n, w, layout[W_Z], d)
    _load_rows(ctx, 0, n, w, layout[W_CTX], layout[W_CTXW])
    loss = _nll_grad(table, meta, clamps, theta_eff, gtheta, w, n, d)
    for k in range(gtheta.size):
        gtheta[k] *= pmask[k]
    return loss


@_jit_nogil
def train_epoch(table, meta, clamps, theta, theta_eff, pmask, data, ctx, order, batch_size, w, gtheta, m, v, hyper,
                state, losses, watch, prev, avg, average):
    """One epoch of Adam steps over ``data[order]`` in batches; ``losses[k]`` NaN marks a rejected step, +inf a
    step rejected by the divergence rule (:func:`.scalar.loss_diverged` on ``watch``), which also puts ``theta``
    back to ``prev``: where the last loss that passed was measured (both kept by the caller across epochs).
    With ``average[0] > 0`` every accepted step also moves the parameters' moving average ``avg``
    (:func:`.optim.average_step_numba`), and a step the divergence rule undid starts it again at ``theta``."""
    n_data, d = data.shape
    layout = _layout(meta)
    status = np.zeros(1, np.int64)
    k = 0
    for start in range(0, n_data, batch_size):
        n = min(batch_size, n_data - start)
        z0 = _block(w, n, layout[W_Z], d)
        c0 = _block(w, n, layout[W_CTX], layout[W_CTXW])
        for i in range(n):
            row = order[start + i]
            for j in range(d):
                z0[i, j] = data[row, j]
            for j in range(c0.shape[1]):
                c0[i, j] = ctx[row, j]
        for q in range(theta.size):
            theta_eff[q] = theta[q] * pmask[q]
        loss = _nll_grad(table, meta, clamps, theta_eff, gtheta, w, n, d)
        for q in range(gtheta.size):
            gtheta[q] *= pmask[q]
        p = layout[W_PARAMS]
        for q in range(p, theta.size):
            theta[q] = theta_eff[q]
        losses[k] = np.nan
        if np.isfinite(loss) and _loss_diverged(float(loss), watch[0], watch[1], watch[2]):
            for q in range(theta.size):
                theta[q] = prev[q]
            state[1] += 1
            hyper[0] *= 0.5
            losses[k] = np.inf
            if average[0] > 0.0:
                _average_restart(theta[:avg.size], avg, average)
        elif np.isfinite(loss):
            watch[0], watch[1], watch[2] = _loss_level(float(loss), watch[0], watch[1], watch[2])
            for q in range(theta.size):
                prev[q] = theta[q]
            _adam_step(theta[:p], gtheta[:p], m[:p], v[:p], hyper, state, status)
            if status[0] == ACCEPTED:
                losses[k] = loss
                if average[0] > 0.0:
                    _average_step(theta[:avg.size], avg, average)
        else:
            state[1] += 1
            hyper[0] *= 0.5
        k += 1


__all__ = ["ENTRIES", "DENSITY", "SAMPLING", "BACKWARD", "PASSES", "LOOPS", "LOOP", "entry_address", "compile_loop",
           "compile_key", "pack_meta", "log_prob_rows", "sample_rows", "nll_grad", "train_epoch"]
