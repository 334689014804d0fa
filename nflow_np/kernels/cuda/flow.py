"""A :class:`~nflow_np.kernels.plan.Program`'s layers on the device: the density pass, its backward, sampling.

The CPU walks a program inside one compiled function; a GPU cannot launch a
layer's products from a kernel, so here the host walks the layers and each
layer launches its kernels (a coupling layer: a gather, one fused product per
network layer, an element kernel of its transform, a row kernel; see
:mod:`.frames`), the per-element log-dets of a frame held in the workspace's
``lde`` block until a row kernel sums them. Launches queue asynchronously on one
stream, so the host runs ahead of the device and never waits inside a pass.

:class:`Layer` reads one layer's fields from the program (offsets into
``theta``, widths, index arrays, copied to the device once, a frame's transform
and its settings). :class:`Workspace` is one device allocation for ``rows``
rows, carved into per-layer views for any ``m <= rows`` (cached, so a training
step builds no views): with ``keep`` every layer's input and caches survive for
the backward (training), without it two ping-pong blocks and one set of caches
serve every layer (inference).
"""

from types import SimpleNamespace

import numpy as np

from .. import program as prog
from .device import cuda, empty
from .elementwise import actnorm_forward_cuda, actnorm_inverse_backward_cuda, actnorm_inverse_cuda, fill_cuda, \
    permute_backward_cuda, permute_cuda
from .frames import autoregressive_backward_cuda, autoregressive_density_cuda, autoregressive_sampling_cuda, \
    coupling_backward_cuda, coupling_density_cuda, coupling_sampling_cuda, transform_settings
from .normalization import batchnorm_forward_cuda, batchnorm_inverse_backward_cuda, batchnorm_inverse_cuda
from .torus import circular_shift_backward_cuda, circular_shift_cuda

__all__ = ["SUPPORTED_OPS", "Layer", "Workspace", "density_pass", "density_backward", "sampling_pass"]

SUPPORTED_OPS = frozenset({prog.OP_COUPLING, prog.OP_AUTOREGRESSIVE, prog.OP_PERMUTE, prog.OP_ACTNORM,
                           prog.OP_BATCHNORM, prog.OP_CIRCULAR_SHIFT})
FRAME_OPS = (prog.OP_COUPLING, prog.OP_AUTOREGRESSIVE)


class Layer:
    """One layer of a program: its op, fields, index arrays (on the device) and parameter views."""

    def __init__(self, program, index, bijector=None):
        f = program.fields[index]
        idata = program.idata

        def ints(offset):
            return np.ascontiguousarray(idata[offset + 1:offset + 1 + idata[offset]])

        d = program.d
        self.op = int(program.ops[index])
        self.bijector = bijector     # a BatchNorm's state: its training flag is read at every pass
        self.off = int(f[prog.F_THETA])
        self.clamp = float(program.clamps[index])
        self.na, self.widths = 0, (d,)
        if self.op in FRAME_OPS:
            self.widths = tuple(int(w) for w in ints(f[prog.F_WIDTHS]))
            self.act = int(f[prog.F_ACT])
            # the transform, its parameters per coordinate, and its settings from the constants the program
            # stores in theta (from F_CONSTS), rounded to the dtype
            self.transform = program.transforms[index]
            self.per = int(f[prog.F_PARAMS])
            self.settings = transform_settings(self.transform, dict(program.transform_constants)[index],
                                               program.dtype)
        if self.op == prog.OP_COUPLING:
            a, b = ints(f[prog.F_A]), ints(f[prog.F_B])
            self.a, self.b, self.na = cuda.to_device(a), cuda.to_device(b), a.size
            self.by_coordinate = bool(f[prog.F_FLAG])
        elif self.op == prog.OP_AUTOREGRESSIVE:
            self.generation = ints(f[prog.F_B])
        elif self.op == prog.OP_PERMUTE:
            self.density_index = cuda.to_device(ints(f[prog.F_A]))
            self.sample_index = cuda.to_device(ints(f[prog.F_B]))
        elif self.op == prog.OP_BATCHNORM:
            self.stats_off = int(f[prog.F_B])
        elif self.op == prog.OP_CIRCULAR_SHIFT:
            self.per = int(f[prog.F_PARAMS])        # one angle per coordinate, or one for all
            self.bound, self.period = dict(program.transform_constants)[index]
        self.hidden = sum(self.widths[1:-1])
        self.nout = self.widths[-1] if self.op in FRAME_OPS else 0
        self.widest = max(self.widths[1:-1], default=1)

    def frame(self):
        """The leading arguments of this frame's launchers in :mod:`.frames`."""
        return self.transform, self.settings

    def bind(self, theta, gtheta, d):
        """Views of this layer's slices of the device vectors ``theta`` and ``gtheta``."""
        o = self.off
        if self.op in (prog.OP_ACTNORM, prog.OP_BATCHNORM):
            self.p0, self.p1 = theta[o:o + d], theta[o + d:o + 2 * d]
            self.g0, self.g1 = gtheta[o:o + d], gtheta[o + d:o + 2 * d]
        if self.op == prog.OP_BATCHNORM:
            self.stats = theta[self.stats_off:self.stats_off + 2 * d + 1]
        if self.op == prog.OP_CIRCULAR_SHIFT:
            self.p0, self.g0 = theta[o:o + self.per], gtheta[o:o + self.per]

    def batch(self, rows):
        """Whether a BatchNorm normalizes by the batch (training mode, at least two rows)."""
        return bool(self.bijector is not None and self.bijector.training and rows >= 2)


class Workspace:
    """Device buffers for a chunk of up to ``rows`` rows; :meth:`views` carves them for ``m`` rows."""

    def __init__(self, layers, d, rows, dtype, keep):
        self.layers, self.d, self.rows, self.keep = layers, d, int(rows), keep
        self.offsets, total = {}, 0
        for name, width in self._regions(layers, d, keep):
            self.offsets[name] = total
            total += width
        self.row_size = total
        self.buffer = empty(max(1, total * self.rows), dtype)
        self._views = {}

    @staticmethod
    def _regions(layers, d, keep):
        """``(name, entries per row)`` of each region, in order."""
        widest = {"cond": max([l.na for l in layers] + [1]), "hidden": max([l.hidden for l in layers] + [1]),
                  "net": max([l.nout for l in layers] + [1]), "delta": max([l.widest for l in layers] + [1])}
        regions = [("z", (len(layers) + 1 if keep else 2) * d), ("ld", 1)]
        if any(l.op in FRAME_OPS for l in layers):
            regions += [("lde", d)]     # a frame's per-element log-dets (an autoregressive backward: direct gradients)
        if keep:
            regions += [(("cache", i), l.na + l.hidden + l.nout) for i, l in enumerate(layers)]
            regions += [("g", 2 * d), ("gld", 1), ("gnet", widest["net"]), ("gcond", widest["cond"]),
                        ("d1", widest["delta"]), ("d2", widest["delta"])]
        else:
            regions += [("cache", widest["cond"] + widest["hidden"] + widest["net"])]
        return regions

    @staticmethod
    def row_floats(layers, d, keep):
        """Entries per row of a workspace (for sizing chunks)."""
        return sum(width for _, width in Workspace._regions(layers, d, keep))

    def _block(self, name, m, start, width):
        base = self.rows * self.offsets[name] + m * start
        return self.buffer[base:base + m * width]

    def views(self, m):
        """The per-layer views for ``m <= rows`` rows (built once per ``m``)."""
        cached = self._views.get(m)
        if cached is not None:
            return cached
        d = self.d
        n_z = len(self.layers) + 1 if self.keep else 2
        v = SimpleNamespace(m=m, keep=self.keep, z=[self._block("z", m, k * d, d).reshape(m, d) for k in range(n_z)],
                            ld=self._block("ld", m, 0, 1), cond=[], hid=[], net=[], gnet=[], gcond=[])
        v.lde = self._block("lde", m, 0, d).reshape(m, d) if "lde" in self.offsets else None
        for i, layer in enumerate(self.layers):
            if layer.op not in FRAME_OPS:     # no caches (and no zero-width views)
                for views in (v.cond, v.hid, v.net, v.gnet, v.gcond):
                    views.append(None)
                continue
            key = ("cache", i) if self.keep else "cache"
            na, hidden, nout = layer.na, layer.hidden, layer.nout
            v.cond.append(self._block(key, m, 0, na).reshape(m, na) if na else None)
            v.hid.append(self._block(key, m, na, hidden))
            v.net.append(self._block(key, m, na + hidden, nout).reshape(m, nout))
            v.gnet.append(self._block("gnet", m, 0, nout).reshape(m, nout) if self.keep else None)
            v.gcond.append(self._block("gcond", m, 0, na).reshape(m, na) if self.keep and na else None)
        if self.keep:
            v.g = [self._block("g", m, k * d, d).reshape(m, d) for k in range(2)]
            v.gld = self._block("gld", m, 0, 1)
            v.d1 = self._block("d1", m, 0, self.offsets["d2"] - self.offsets["d1"])
            v.d2 = self._block("d2", m, 0, self.row_size - self.offsets["d2"])
        self._views[m] = v
        return v


def density_pass(layers, theta, v, x, ld, work):
    """Data ``x`` (m, d) to the base point, adding the log-dets to ``ld``; returns the base point.

    With a keeping workspace ``x`` must be ``v.z[0]`` and every layer's input stays in ``v.z``.
    """
    zin = x
    fill_cuda(ld, 0.0)
    for i, layer in enumerate(layers):
        zout = v.z[i + 1] if v.keep else v.z[i % 2]
        op = layer.op
        if op == prog.OP_PERMUTE:
            permute_cuda(zin, layer.density_index, zout)
        elif op == prog.OP_ACTNORM:
            actnorm_inverse_cuda(layer.p0, layer.p1, zin, zout, ld)
        elif op == prog.OP_CIRCULAR_SHIFT:
            circular_shift_cuda(zin, layer.p0, layer.bound, layer.period, -1, zout)
        elif op == prog.OP_BATCHNORM:
            batchnorm_inverse_cuda(layer.p0, layer.p1, layer.stats, layer.clamp, layer.batch(v.m), zin, zout, ld,
                                   work)
        elif op == prog.OP_COUPLING:
            coupling_density_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, layer.by_coordinate,
                                  layer.per, layer.a, layer.b, zin, zout, ld, v.cond[i], v.hid[i], v.net[i], v.lde,
                                  work)
        else:
            autoregressive_density_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, zin, zout, ld,
                                        v.hid[i], v.net[i], v.lde, work)
        zin = zout
    return zin


def density_backward(layers, theta, gtheta, v, work):
    """The VJP of :func:`density_pass` (run with a keeping workspace), from ``v.g[0]`` and ``v.gld``.

    Parameter gradients are written into ``gtheta`` (unmasked), each layer's own slice.
    """
    gout, gin = v.g
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        zin, zout = v.z[i], v.z[i + 1]
        op = layer.op
        if op == prog.OP_PERMUTE:
            permute_backward_cuda(gout, layer.density_index, gin)
        elif op == prog.OP_ACTNORM:
            actnorm_inverse_backward_cuda(layer.p0, zout, gout, v.gld, gin, layer.g0, layer.g1, work)
        elif op == prog.OP_CIRCULAR_SHIFT:
            circular_shift_backward_cuda(gout, gin, layer.g0, work)
        elif op == prog.OP_BATCHNORM:
            batchnorm_inverse_backward_cuda(layer.p0, layer.stats, layer.clamp, layer.batch(v.m), zin, gout, v.gld,
                                            gin, layer.g0, layer.g1, work)
        elif op == prog.OP_COUPLING:
            coupling_backward_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, layer.by_coordinate,
                                   layer.per, layer.a, layer.b, zin, gout, v.gld, v.cond[i], v.hid[i], v.net[i], gin,
                                   gtheta, v.gnet[i], v.gcond[i], v.d1, v.d2, work)
        else:
            autoregressive_backward_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, zin, gout, v.gld,
                                         v.hid[i], v.net[i], v.lde, gin, gtheta, v.gnet[i], v.d1, v.d2, work)
        gout, gin = gin, gout


def sampling_pass(layers, theta, v, z, x, ld, work):
    """Base points ``z`` (m, d) to data ``x``, adding the forward log-dets to ``ld`` (an inference workspace)."""
    zin = z
    fill_cuda(ld, 0.0)
    last = len(layers) - 1
    for step, i in enumerate(range(last, -1, -1)):
        layer = layers[i]
        zout = x if step == last else v.z[step % 2]
        op = layer.op
        if op == prog.OP_PERMUTE:
            permute_cuda(zin, layer.sample_index, zout)
        elif op == prog.OP_ACTNORM:
            actnorm_forward_cuda(layer.p0, layer.p1, zin, zout, ld)
        elif op == prog.OP_CIRCULAR_SHIFT:
            circular_shift_cuda(zin, layer.p0, layer.bound, layer.period, 1, zout)
        elif op == prog.OP_BATCHNORM:
            batchnorm_forward_cuda(layer.p0, layer.p1, layer.stats, layer.clamp, zin, zout, ld)
        elif op == prog.OP_COUPLING:
            coupling_sampling_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, layer.by_coordinate,
                                   layer.per, layer.a, layer.b, zin, zout, ld, v.cond[i], v.hid[i], v.net[i], v.lde,
                                   work)
        else:
            autoregressive_sampling_cuda(*layer.frame(), theta, layer.off, layer.widths, layer.act, layer.generation,
                                         zin, zout, ld, v.hid[i], v.net[i], work)
        zin = zout
