"""From a flow object to the arrays of :mod:`program`, and the calls that run them.

:func:`program_for` returns the flow's :class:`Program` (built once, kept on
the flow, rebuilt when its structure changes) or ``None`` when a layer is not
covered. A program owns no parameters: every call copies the flow's current
``params`` into its flat ``theta`` (a few microseconds), so optimizers and
users keep updating the arrays they hold.
"""

import numpy as np

from . import program as prog
from .autoregressive import degree_groups, maf_forward_scratch_size
from .backend import load_numba
from .mlp import ACTIVATION_CODES, hidden_size

__all__ = ["Program", "compile_flow", "program_for", "supports"]

# rows per chunk when BLAS does the products: large enough to amortize the calls, small enough for
# the caches to stay in L2
CHUNK = 256
# Up to this many multiply-adds per product, OpenBLAS runs a product on the calling thread, so
# chunks can run on all threads at once; above it BLAS spreads each product over its own threads.
BLAS_SINGLE_THREAD = 65536


def _flatten(bijector):
    from ..bijectors.chain import Chain

    if isinstance(bijector, Chain):
        out = []
        for b in bijector.bijectors:
            out.extend(_flatten(b))
        return out
    return [bijector]


class Program:
    """The flattened form of one flow; see :mod:`nflow_np.kernels.program` for the arrays."""

    def __init__(self, flow):
        from ..bijectors.autoregressive import MaskedAutoregressive, SplineAutoregressive
        from ..bijectors.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
        from ..bijectors.linear import Permute, Reverse
        from ..bijectors.normalization import ActNorm, BatchNorm
        from ..distributions.normal import MultivariateNormalDiag

        base = flow.distribution
        if not (isinstance(base, MultivariateNormalDiag) and base.batch_shape == () and not dict(base.parameters())
                and np.all(base.loc == 0) and np.all(base.scale_diag == 1)):
            raise prog.Unsupported("the base distribution is not a standard MultivariateNormalDiag")
        self.dtype = np.dtype(flow.dtype)
        self.d = d = int(flow.event_shape[0])
        self.context_size = c = int(flow.context_size)
        self.layers = _flatten(flow.bijector)
        ops, fields, clamps, idata, pmask = [], [], [], [0], []
        self.slots = []        # (params dict, key, offset, size)
        self.batchnorms = []   # (layer index, bijector); their running statistics follow the parameters
        self.splines = []      # (layer index, bijector); their bound and minima follow, as constants
        cache = [0]            # per-row cache floats so far
        widest = {"net": 1, "cond": 1, "hidden": 1, "maf_scratch": 0, "weights": 1}

        def ints(values):
            off = len(idata)
            values = [int(v) for v in values]
            idata.extend([len(values)] + values)
            return off

        def add_params(owner, keys, mask=None):
            start = len(pmask)
            for key in keys:
                arr = owner.params[key]
                self.slots.append((owner.params, key, len(pmask), arr.size))
                m = np.ones(arr.size) if mask is None or key not in mask else np.asarray(mask[key]).ravel()
                pmask.extend(m.tolist())
            return start

        def add_net(net, n_in, masks=None):
            if net.activation not in ACTIVATION_CODES:
                raise prog.Unsupported(f"activation {net.activation!r} is not compiled")
            if net.context_features and masks is not None:
                raise prog.Unsupported("conditional MADE networks (MAF with a context) are not compiled")
            # a conditional coupling's network sees its coordinates, then the context
            widths = (n_in + net.context_features,) + net.hidden + (net.out_features,)
            keys = [f"{kind}{i}" for i in range(len(widths) - 1) for kind in ("w", "b")]
            off = add_params(net, keys, masks)
            widest["hidden"] = max([widest["hidden"]] + list(net.hidden))
            widest["net"] = max(widest["net"], net.out_features)
            widest["weights"] = max([widest["weights"]] + [widths[i] * widths[i + 1] for i in range(len(widths) - 1)])
            return off, widths

        for b in self.layers:
            f = [0] * 8
            clamp = 0.0
            if b.dtype is not None and b.dtype != self.dtype:
                raise prog.Unsupported(f"{b.name} has dtype {b.dtype}")
            if isinstance(b, (AffineCoupling, AdditiveCoupling)):
                affine = isinstance(b, AffineCoupling)
                f[prog.F_THETA], widths = add_net(b.net, b._a.size)
                f[prog.F_WIDTHS], f[prog.F_ACT] = ints(widths), ACTIVATION_CODES[b.net.activation]
                f[prog.F_A], f[prog.F_B], f[prog.F_FLAG] = ints(b._a), ints(b._b), int(affine)
                f[prog.F_CACHE] = cache[0]
                cache[0] += widths[0] + hidden_size(widths) + widths[-1]
                widest["cond"] = max(widest["cond"], widths[0])
                clamp = (b.log_scale_clamp or 0.0) if affine else 0.0
                op = prog.OP_COUPLING
            elif isinstance(b, SplineCoupling):
                f[prog.F_THETA], widths = add_net(b.net, b._a.size)
                f[prog.F_WIDTHS], f[prog.F_ACT] = ints(widths), ACTIVATION_CODES[b.net.activation]
                f[prog.F_A], f[prog.F_B], f[prog.F_FLAG] = ints(b._a), ints(b._b), b.spline.bins
                f[prog.F_CACHE] = cache[0]
                cache[0] += widths[0] + hidden_size(widths) + widths[-1] + 4 * b._b.size
                widest["cond"] = max(widest["cond"], widths[0])
                self.splines.append((len(ops), b))
                op = prog.OP_SPLINE
            elif isinstance(b, SplineAutoregressive):
                net = b.net
                f[prog.F_THETA], widths = add_net(net, d, {f"w{i}": m for i, m in enumerate(net.masks)})
                f[prog.F_WIDTHS], f[prog.F_ACT] = ints(widths), ACTIVATION_CODES[net.activation]
                f[prog.F_A], f[prog.F_B], f[prog.F_FLAG] = ints([]), ints(b._generation), b.spline.bins
                f[prog.F_CACHE] = cache[0]
                cache[0] += hidden_size(widths) + widths[-1] + 4 * d
                self.splines.append((len(ops), b))
                op = prog.OP_SPLINE_MAF
            elif isinstance(b, MaskedAutoregressive):
                net = b.net
                masks = {f"w{i}": m for i, m in enumerate(net.masks)}
                f[prog.F_THETA], widths = add_net(net, d, masks)
                f[prog.F_WIDTHS], f[prog.F_ACT] = ints(widths), ACTIVATION_CODES[net.activation]
                f[prog.F_A], f[prog.F_B] = ints([]), ints(b._generation)
                groups = degree_groups(net.degrees, d)
                f[prog.F_GROUPS] = len(idata)
                idata.extend(groups.tolist())
                f[prog.F_CACHE] = cache[0]
                cache[0] += hidden_size(widths) + widths[-1]
                widest["maf_scratch"] = max(widest["maf_scratch"], maf_forward_scratch_size(widths))
                clamp = b.log_scale_clamp or 0.0
                op = prog.OP_MAF
            elif isinstance(b, (Permute, Reverse)):
                perm = b.permutation if isinstance(b, Permute) else np.arange(d)[::-1]
                if perm.size != d:
                    raise prog.Unsupported(f"{b.name} acts on {perm.size} coordinates, the flow on {d}")
                f[prog.F_A], f[prog.F_B] = ints(np.argsort(perm)), ints(perm)
                op = prog.OP_PERMUTE
            elif isinstance(b, ActNorm):
                f[prog.F_THETA] = add_params(b, ["log_scale", "shift"])
                op = prog.OP_ACTNORM
            elif isinstance(b, BatchNorm):
                if b.features != d:
                    raise prog.Unsupported(f"{b.name} acts on {b.features} features, the flow on {d}")
                f[prog.F_THETA] = add_params(b, ["log_gamma", "beta"])
                self.batchnorms.append((len(ops), b))
                clamp = b.eps
                op = prog.OP_BATCHNORM
            else:
                raise prog.Unsupported(f"{b.name} ({type(b).__name__}) is not compiled")
            ops.append(op)
            fields.append(f)
            clamps.append(clamp)

        self.ops = np.array(ops, dtype=np.int64)
        self.fields = np.array(fields, dtype=np.int64).reshape(len(ops), 8)
        # in the parameters' dtype, so float32 programs evaluate tanh and exp in single precision
        self.clamps = np.array(clamps, dtype=self.dtype)
        self.idata = np.array(idata, dtype=np.int64)
        self.n_params = len(pmask)
        # running statistics and momentum of each BatchNorm: [mean (d), var (d), momentum]
        self.buffer_slots, self.constants = [], []
        for layer, b in self.batchnorms:
            start = len(pmask)
            self.fields[layer, prog.F_B] = start
            self.buffer_slots += [(b.__dict__, "running_mean", start, d), (b.__dict__, "running_var", start + d, d)]
            self.constants.append((start + 2 * d, b.momentum))
            pmask.extend([1.0] * (2 * d + 1))
        for layer, b in self.splines:
            start = len(pmask)
            self.fields[layer, prog.F_GROUPS] = start
            self.constants += [(start + k, value) for k, value in enumerate(b.spline.args)]
            pmask.extend([1.0] * len(b.spline.args))
        self.size = len(pmask)
        self.pmask = np.array(pmask, dtype=self.dtype)
        n_layers = len(ops)
        offsets, row = {}, 0
        for name, width in ((prog.W_Z, (n_layers + 1) * d), (prog.W_LD, 1), (prog.W_G0, d), (prog.W_G1, d),
                            (prog.W_GLD, 1), (prog.W_GNET, widest["net"]), (prog.W_GCOND, widest["cond"]),
                            (prog.W_D1, widest["hidden"]), (prog.W_D2, widest["hidden"]), (prog.W_CTX, c)):
            offsets[name] = row
            row += width
        caches_at = row
        row += cache[0]
        self.fields[:, prog.F_CACHE] += caches_at
        layout = [offsets[k] for k in range(prog.W_ROW)] + [row, widest["maf_scratch"], self.n_params,
                                                             offsets[prog.W_CTX], c]
        self.layout = np.array(layout, dtype=np.int64)
        self.parallel_chunks = CHUNK * widest["weights"] <= BLAS_SINGLE_THREAD
        self.actnorms = [b for b in self.layers if isinstance(b, ActNorm)]
        # each slot's name in flow.parameters(), so gradients come back keyed like the optimizer's arrays
        by_id = {id(arr): name for name, arr in flow.parameters()}
        self.names = [by_id[id(params[key])] for params, key, _, _ in self.slots]

    @staticmethod
    def _signature(flow):
        return (id(flow.bijector),) + tuple((id(b), type(b)) for b in _flatten(flow.bijector))

    # ------------------------------------------------------------------ parameters
    def theta(self):
        """The flow's current parameters, then its running statistics, flat."""
        theta = np.empty(self.size, dtype=self.dtype)
        for params, key, off, size in self.slots + self.buffer_slots:
            arr = params[key]
            if arr.size != size:
                raise ValueError(f"parameter {key!r} changed size from {size} to {arr.size}; rebuild the flow")
            theta[off:off + size] = arr.reshape(-1)
        for off, value in self.constants:
            theta[off] = value
        return theta

    def write_back(self, theta, params=True):
        """Copy a flat vector into the flow's running statistics and (with ``params``) parameters, in place."""
        for owner, key, off, size in (self.slots if params else []) + self.buffer_slots:
            owner[key][...] = theta[off:off + size].reshape(owner[key].shape)

    def batch_statistics(self):
        """Whether a BatchNorm layer is in training mode (its density pass couples the rows of a batch)."""
        return any(b.training for _, b in self.batchnorms)

    def gradients(self, gtheta):
        """A flat gradient as a dict keyed like ``flow.parameters()``."""
        return {name: gtheta[off:off + size].reshape(params[key].shape).copy()
                for name, (params, key, off, size) in zip(self.names, self.slots)}

    # ------------------------------------------------------------------ buffers
    def workspace(self, rows, parts=1):
        return np.empty((parts, rows * int(self.layout[prog.W_ROW]) + int(self.layout[prog.W_CONST])),
                        dtype=self.dtype)

    def _arrays(self):
        for layer, b in self.batchnorms:
            self.fields[layer, prog.F_FLAG] = int(b.training)
        return self.ops, self.fields, self.clamps, self.idata, self.layout

    def _kernel(self, name, backend):
        if backend == "numba":
            load_numba()
        return getattr(prog, f"{name}_{backend}")

    def _geometry(self, n, backend):
        """``(parts, chunk)``: how many threads share ``n`` rows, and the rows per chunk."""
        chunk = min(CHUNK, n)
        if backend != "numba" or not self.parallel_chunks or n < 8 * CHUNK:
            return 1, chunk
        import numba
        return max(1, min(numba.get_num_threads(), n // (4 * CHUNK))), chunk

    def _effective(self):
        theta = self.theta()
        theta *= self.pmask
        return theta

    # ------------------------------------------------------------------ whole-flow calls
    def context_rows(self, context, n):
        """The context as contiguous ``(n, c)`` rows (``(n, 0)`` for an unconditional flow)."""
        if context is None:
            return np.empty((n, self.context_size), dtype=self.dtype)
        return np.ascontiguousarray(np.broadcast_to(context, (n, self.context_size)), dtype=self.dtype)

    def log_prob(self, x, backend, context=None):
        """Log-densities of rows ``x`` (n, d) given ``context`` rows (n, c), validated by the caller."""
        n = x.shape[0]
        out = np.empty(n, dtype=self.dtype)
        if n:
            parts, chunk = self._geometry(n, backend)
            self._kernel("flow_log_prob", backend)(*self._arrays(), self._effective(), np.ascontiguousarray(x),
                                                   self.context_rows(context, n), out, self.workspace(chunk, parts),
                                                   chunk)
        return out

    def sample(self, z, backend, context=None):
        """``(forward(z), log p(forward(z)))`` for base points ``z`` (n, d) and ``context`` rows."""
        n = z.shape[0]
        x = np.empty_like(z)
        log_prob = np.empty(n, dtype=self.dtype)
        if n:
            parts, chunk = self._geometry(n, backend)
            self._kernel("flow_sample", backend)(*self._arrays(), self._effective(), np.ascontiguousarray(z),
                                                 self.context_rows(context, n), x, log_prob,
                                                 self.workspace(chunk, parts), chunk)
        return x, log_prob

    def nll_and_grad(self, x, backend, context=None):
        """Mean NLL of rows ``x`` (given ``context`` rows) and the flat gradient with respect to ``theta``."""
        gtheta = np.zeros(self.size, dtype=self.dtype)
        theta = self._effective()
        loss = self._kernel("flow_nll_grad", backend)(*self._arrays(), theta, self.pmask, np.ascontiguousarray(x),
                                                      self.context_rows(context, x.shape[0]),
                                                      self.workspace(x.shape[0]), gtheta)
        self.write_back(theta, params=False)   # BatchNorm's running statistics moved
        return float(loss), gtheta


def compile_flow(flow):
    """A :class:`Program` for ``flow``; raises :class:`Unsupported` naming the first layer it cannot run."""
    return Program(flow)


def program_for(flow):
    """The flow's cached :class:`Program`, rebuilt if its layers changed; ``None`` when not compilable."""
    signature = Program._signature(flow)
    cached = flow.__dict__.get("_program")
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        program = Program(flow)
    except prog.Unsupported:
        program = None
    flow.__dict__["_program"] = (signature, program)
    return program


def supports(flow):
    """``(True, "")`` when the compiled backend runs ``flow`` whole, else ``(False, reason)``."""
    try:
        Program(flow)
    except prog.Unsupported as exc:
        return False, str(exc)
    return True, ""


class Trainer:
    """Whole epochs of Adam steps in one compiled call, on buffers allocated once.

    The flat parameters and Adam's moments are read from the flow and the
    optimizer at the start of every epoch and written back at its end, so
    everything between epochs (validation, callbacks, snapshots, a changed
    learning rate) sees and may change the usual arrays.
    """

    def __init__(self, program, optimizer, batch_size, backend):
        self.program = program
        self.optimizer = optimizer
        self.backend = backend
        self.keys = program.names
        size = program.size
        self.theta_eff = np.empty(size, dtype=program.dtype)
        self.gtheta = np.zeros(size, dtype=program.dtype)
        self.m = np.zeros(size, dtype=program.dtype)
        self.v = np.zeros(size, dtype=program.dtype)
        self.ws = program.workspace(batch_size)
        self.batch_size = batch_size
        self.state = np.zeros(2, dtype=np.int64)
        self.hyper = np.zeros(7, dtype=np.float64)
        self.status = np.zeros(1, dtype=np.int64)

    def _flat(self, arrays, out):
        for key, (_, _, off, size) in zip(self.keys, self.program.slots):
            out[off:off + size] = arrays[key].reshape(-1)

    def _unflat(self, flat, arrays):
        for key, (_, _, off, size) in zip(self.keys, self.program.slots):
            arrays[key][...] = flat[off:off + size].reshape(arrays[key].shape)

    def epoch(self, data, order, context=None):
        """Run one epoch over ``data[order]`` (and ``context[order]``); returns the per-step losses (NaN where a
        step was rejected)."""
        opt = self.optimizer
        theta = self.program.theta()
        self._flat(opt._m, self.m)
        self._flat(opt._v, self.v)
        self.hyper[:] = (opt.lr, opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay or 0.0,
                         opt.clip_norm or 0.0, np.finfo(self.program.dtype).max)
        self.state[:] = (opt.steps, 0)
        losses = np.empty(-(-len(data) // self.batch_size), dtype=np.float64)
        self.program._kernel("train_epoch", self.backend)(
            *self.program._arrays(), theta, self.theta_eff, self.program.pmask, data,
            self.program.context_rows(context, len(data)), order, self.batch_size,
            self.ws, self.gtheta, self.m, self.v, self.hyper, self.state, losses)
        self.program.write_back(theta)
        self._unflat(self.m, opt._m)
        self._unflat(self.v, opt._v)
        opt.lr = float(self.hyper[0])
        opt.steps = int(self.state[0])
        return losses
