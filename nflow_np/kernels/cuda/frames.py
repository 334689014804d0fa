"""CUDA twin of :mod:`nflow_np.kernels.frames`: the coupling frame and the autoregressive frame, for every transform.

A frame holds no transform-specific code: its element kernels call the
transform's scalar math (:mod:`nflow_np.kernels.transforms`: ``density``,
``sampling``, ``density_vjp``), compiled as CUDA device functions from the one
Python source (:func:`.device.device_version`). The kernels are built per
(dtype, launch geometry, transform name) by :func:`_kernels`; a transform's
settings travel as one tuple kernel argument in the working dtype
(:func:`transform_settings`).

Parameters of a transformed element are read from the network output ``net`` at
row ``r``, columns ``base + q * stride``, as on the CPU: a coupling emits them
``(parameter, coordinate)``-major (``base = j``, ``stride = nb``) unless its
network emits them by coordinate (``base = j * P``, ``stride = 1``); a MADE emits
``(parameter, feature)`` (``base = j``, ``stride = d``).

A coupling's pass is the gather of the conditioning columns, the network
(:func:`.mlp.mlp_forward_cuda`), one element kernel (one thread per row and
transformed coordinate; the per-element log-dets go to an ``(n, >= nb)`` block
``lde``) and a row kernel (pass-through columns, the row's log-det summed in a
register in column order: no atomics). Its backward is an element kernel
(``gnet`` and the direct input gradient), the network's backward and a row
kernel adding the conditioning gradient. The autoregressive density pass is the
network and the same two kernels; its backward holds the direct gradient in an
``(n, d)`` block while the network's backward writes the input gradient, then
adds it. Autoregressive sampling is ``d`` sequential network passes in
generation order, each followed by a row kernel fixing one coordinate and
adding its log-det (in generation order, as the CPU does).
"""

from types import SimpleNamespace

import numpy as np

from .. import transforms
from .device import cuda, device_version, family, jit, launch_rows
from .elementwise import fill_cuda, gather_cuda
from .mlp import mlp_backward_cuda, mlp_forward_cuda

__all__ = ["transform_settings", "coupling_density_cuda", "coupling_sampling_cuda", "coupling_backward_cuda",
           "autoregressive_density_cuda", "autoregressive_backward_cuda", "autoregressive_sampling_cuda"]


def transform_settings(name, constants, dtype):
    """The settings tuple ``st`` of transform ``name`` from its constants (floats), in ``dtype``.

    The constants are rounded to the dtype first, as the program stores them in ``theta``, then the
    transform's plain-Python ``settings`` makes the tuple the device functions read (NumPy scalars of
    the dtype, and any integers it holds).
    """
    settings = transforms.module_for(name).settings
    return tuple(getattr(settings, "py_func", settings)(np.array(constants, dtype=dtype)))


@family
def _kernels(ft, geom, name):
    module = transforms.module_for(name)
    density = device_version(module.density)
    sampling = device_version(module.sampling)
    density_vjp = device_version(module.density_vjp)
    zero = ft(0)

    # ------------------------------------------------------------ coupling
    def coupling_elements(step):
        @jit
        def elements(inp, out, net, lde, b, by_coordinate, per, st):
            # one thread per (row, transformed coordinate)
            t = cuda.grid(1)
            nb = b.size
            if t < inp.shape[0] * nb:
                i = t // nb
                j = t - i * nb
                c = b[j]
                if by_coordinate:
                    o, l = step(inp[i, c], net, i, j * per, 1, st)
                else:
                    o, l = step(inp[i, c], net, i, j, nb, st)
                out[i, c] = o
                lde[i, j] = l

        return elements

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
    def coupling_grad(y, gx, gld, net, gnet, gy, b, by_coordinate, per, st):
        # y the density pass's input, gx = dL/dx: the transform's VJP writes the coordinate's P entries of gnet,
        # and the direct dL/dy_b
        t = cuda.grid(1)
        nb = b.size
        if t < y.shape[0] * nb:
            i = t // nb
            j = t - i * nb
            c = b[j]
            if by_coordinate:
                gy[i, c] = density_vjp(y[i, c], gx[i, c], gld[i], net, gnet, i, j * per, 1, st)
            else:
                gy[i, c] = density_vjp(y[i, c], gx[i, c], gld[i], net, gnet, i, j, nb, st)

    @jit
    def add_conditioning_grad(gx, gcond, a, gy):
        i = cuda.grid(1)
        if i < gx.shape[0]:
            for j in range(a.size):
                gy[i, a[j]] = gx[i, a[j]] + gcond[i, j]

    # ------------------------------------------------------------ autoregressive (MADE: parameter, feature)
    @jit
    def autoregressive_elements(y, x, net, lde, st):
        t = cuda.grid(1)
        d = y.shape[1]
        if t < y.shape[0] * d:
            i = t // d
            j = t - i * d
            o, l = density(y[i, j], net, i, j, d, st)
            x[i, j] = o
            lde[i, j] = l

    @jit
    def row_sums(lde, ld, count):
        i = cuda.grid(1)
        if i < ld.shape[0]:
            total = zero
            for j in range(count):
                total += lde[i, j]
            ld[i] += total

    @jit
    def autoregressive_grad(y, gx, gld, net, gnet, direct, st):
        t = cuda.grid(1)
        d = y.shape[1]
        if t < y.shape[0] * d:
            i = t // d
            j = t - i * d
            direct[i, j] = density_vjp(y[i, j], gx[i, j], gld[i], net, gnet, i, j, d, st)

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
    def sample_feature(x, y, net, ld, feature, st):
        # coordinate `feature` of every row, from a network pass over the coordinates generated before it
        i = cuda.grid(1)
        if i < x.shape[0]:
            o, l = sampling(x[i, feature], net, i, feature, x.shape[1], st)
            y[i, feature] = o
            ld[i] += l

    return SimpleNamespace(coupling_density=coupling_elements(density), coupling_sampling=coupling_elements(sampling),
                           coupling_finish=coupling_finish, coupling_grad=coupling_grad,
                           add_conditioning_grad=add_conditioning_grad, autoregressive_elements=autoregressive_elements,
                           row_sums=row_sums, autoregressive_grad=autoregressive_grad, add_direct=add_direct,
                           sample_feature=sample_feature)


# ---------------------------------------------------------------- coupling
# ``name``: the transform's name; ``st``: its settings (:func:`transform_settings`); ``by_coordinate``, ``per``:
# the network's output layout and the parameters per coordinate (the program's F_FLAG and F_PARAMS); ``a``, ``b``:
# the conditioning and transformed columns (device int64); ``lde``: an (n, >= nb) block for per-element log-dets.

def _coupling_pass(sampling, name, st, theta, off, widths, act, by_coordinate, per, a, b, inp, out, ld, cond, hid, net,
                   lde, work):
    gather_cuda(inp, a, cond)
    mlp_forward_cuda(theta, off, widths, act, cond, hid, net, work)
    k = _kernels(inp.dtype, name)
    n, nb = inp.shape[0], b.size
    launch_rows(k.coupling_sampling if sampling else k.coupling_density, n * nb, inp, out, net, lde, b,
                bool(by_coordinate), int(per), st)
    launch_rows(k.coupling_finish, n, inp, out, lde, ld, a, nb)


def coupling_density_cuda(name, st, theta, off, widths, act, by_coordinate, per, a, b, y, x, ld, cond, hid, net, lde,
                          work=None):
    """Density direction (data ``y`` to ``x``), adding the log-dets to ``ld``; network caches into ``cond``, ``hid``,
    ``net``."""
    _coupling_pass(False, name, st, theta, off, widths, act, by_coordinate, per, a, b, y, x, ld, cond, hid, net, lde,
                   work)


def coupling_sampling_cuda(name, st, theta, off, widths, act, by_coordinate, per, a, b, x, y, ld, cond, hid, net, lde,
                           work=None):
    """Sampling direction (base ``x`` to ``y``), adding the log-dets to ``ld``."""
    _coupling_pass(True, name, st, theta, off, widths, act, by_coordinate, per, a, b, x, y, ld, cond, hid, net, lde,
                   work)


def coupling_backward_cuda(name, st, theta, off, widths, act, by_coordinate, per, a, b, y, gx, gld, cond, hid, net, gy,
                           gtheta, gnet, gcond, d1, d2, work=None):
    """VJP of :func:`coupling_density_cuda` at its input ``y``, from its caches, ``gx = dL/dx`` and ``gld``:
    ``gy = dL/dy``, the network's parameter gradients into ``gtheta``."""
    k = _kernels(y.dtype, name)
    n = y.shape[0]
    launch_rows(k.coupling_grad, n * b.size, y, gx, gld, net, gnet, gy, b, bool(by_coordinate), int(per), st)
    mlp_backward_cuda(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2, work)
    launch_rows(k.add_conditioning_grad, n, gx, gcond, a, gy)


# ---------------------------------------------------------------- autoregressive

def autoregressive_density_cuda(name, st, theta, off, widths, act, y, x, ld, hid, net, lde, work=None):
    """Density direction: one network pass over ``y``, then every coordinate at once (``lde``: (n, d))."""
    mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
    k = _kernels(y.dtype, name)
    n, d = y.shape
    launch_rows(k.autoregressive_elements, n * d, y, x, net, lde, st)
    launch_rows(k.row_sums, n, lde, ld, d)


def autoregressive_backward_cuda(name, st, theta, off, widths, act, y, gx, gld, hid, net, direct, gy, gtheta, gnet, d1,
                                 d2, work=None):
    """VJP of :func:`autoregressive_density_cuda`; ``direct`` ((n, d)) holds the direct gradient meanwhile."""
    k = _kernels(y.dtype, name)
    n, d = y.shape
    launch_rows(k.autoregressive_grad, n * d, y, gx, gld, net, gnet, direct, st)
    mlp_backward_cuda(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2, work)
    launch_rows(k.add_direct, n * d, direct, gy)


def autoregressive_sampling_cuda(name, st, theta, off, widths, act, generation, x, y, ld, hid, net, work=None):
    """Sampling, ``y_i`` from ``x_i`` in ``generation`` order (host ints), adding the log-dets to ``ld``.

    Coordinate ``i``'s parameters depend on the coordinates generated before it only: one full network
    pass over the partly filled ``y`` fixes it. The CPU's degree-grouped single pass computes each hidden
    unit once but walks the units one at a time; on the GPU the ``d`` passes are dense products.
    """
    k = _kernels(x.dtype, name)
    n = x.shape[0]
    fill_cuda(y, 0.0)
    for feature in np.asarray(generation).tolist():
        mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
        launch_rows(k.sample_feature, n, x, y, net, ld, int(feature), st)
