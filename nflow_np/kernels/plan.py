"""From a flow object to the arrays of :mod:`program`, and the calls that run them.

:func:`program_for` returns the flow's :class:`Program` (built once, kept on
the flow, rebuilt when its structure changes) or ``None`` when a layer is not
covered. A program owns no parameters: every call copies the flow's current
``params`` into its flat ``theta`` (a few microseconds), so optimizers and
users keep updating the arrays they hold. What it keeps between calls depends
on nothing a user changes: the packed ``meta`` (repacked when a BatchNorm's
mode or the compiled networks change) and a spare workspace per batch size.
"""

import threading

import numpy as np

from . import program as prog
from . import specs, transforms
from .mlp import ACTIVATION_CODES, BLAS_SINGLE_THREAD, SMALL_NETWORK, SMALL_TRAINING_NETWORK, hidden_size
from .residual import RESIDUAL

# the frames' network entries by layout: row-major, and by unit (frames._by_units)
NETWORK_ENTRIES = ("network", "network_by_unit")

__all__ = ["FlatGradients", "Program", "compile_flow", "program_for", "supports", "AdamExchange", "NumbaTrainer"]

# rows per chunk when BLAS does the products: large enough to amortize the calls, small enough for
# the caches to stay in L2
CHUNK = 256
# nll_and_grad keeps a workspace between calls (a training loop calls it once per batch, with one or two batch
# sizes) for up to this many sizes, each up to this many bytes
SPARE_SIZES = 4
SPARE_BYTES = 32 << 20
# Chunks can run on all threads at once when every product of a chunk stays on the calling thread
# (mlp.BLAS_SINGLE_THREAD); above it BLAS spreads each product over its own threads.


def made_pack_index(off, widths, groups, generation, d):
    """Where in theta each packed weight of a MADE comes from, in the order its sampling entry reads them.

    The sampling entry (:func:`~.frames.autoregressive_sampling`) keeps each
    hidden layer's units sorted by degree (``groups``, :func:`degree_groups`) and
    the coordinates in generation order. A unit of degree ``k`` then reads a
    prefix of the layer below: the coordinates of order ``< k`` (first layer), or
    the units of degree ``<= k``; so do the outputs of the order-``k`` coordinate.
    For step ``k``, each hidden layer's units of degree ``k``, then the order-``k``
    coordinate's outputs, get one row-major block (a row per unit, a column per
    input of that prefix). Every weight in a block is unmasked, and every unmasked
    weight is in a block, so a block times its prefix is the masked product.
    Returns the indices and the largest block's size.
    """
    n_hidden = len(widths) - 2
    n_out = widths[-1] // d
    woff = np.cumsum([off] + [widths[i] * widths[i + 1] + widths[i + 1] for i in range(len(widths) - 1)])
    goff = np.cumsum([0] + [d + 1 + widths[i + 1] for i in range(n_hidden)])

    def sorted_units(lyr):
        return groups[goff[lyr] + d + 1:goff[lyr] + d + 1 + widths[lyr + 1]]

    parts, block = [], 0
    for k in range(d):
        for lyr in range(n_hidden + 1):
            if lyr == 0:
                inputs = np.asarray(generation[:k])
            else:
                inputs = sorted_units(lyr - 1)[:groups[goff[lyr - 1] + k + 1]]
            if lyr < n_hidden:
                units = sorted_units(lyr)[groups[goff[lyr] + k]:groups[goff[lyr] + k + 1]]
            else:
                units = generation[k] + d * np.arange(n_out)
            parts.append((woff[lyr] + inputs[None, :] * widths[lyr + 1] + units[:, None]).ravel())
            block = max(block, parts[-1].size)
    return np.concatenate(parts).astype(np.int64), block


def network_code(net):
    """A network's activation code as the frames read it: ``RESIDUAL + code`` for a residual network
    (:mod:`.residual`)."""
    return ACTIVATION_CODES[net.activation] + (RESIDUAL if net.residual else 0)


def degree_groups(degrees, d):
    """Flat int64 array: for each hidden layer of a MADE, ``d + 1`` offsets then its units sorted by degree.

    Offsets ``o[k]..o[k+1]`` (relative to the start of the unit list) select
    the units of degree ``k`` (``k = 1..d-1``; degree 0 and ``d`` are empty).
    """
    parts = []
    for deg in degrees[1:]:
        order = np.argsort(deg, kind="stable")
        counts = np.bincount(deg, minlength=d + 1)[:d + 1]
        offsets = np.concatenate([[0], np.cumsum(counts)])[:d + 1]
        parts.append(offsets)
        parts.append(order)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class FlatGradients(dict):
    """A gradient dict whose arrays are consecutive slices of one flat vector, as a compiled pass returns them.

    It is an ordinary dict of arrays (change, replace or delete entries at will); ``flat_source`` is
    ``(flat, names, views)``: the vector, the names in its order and the arrays as handed out, so that an optimizer
    that finds every entry still the array handed out (``grads[name] is view``) can read the vector instead of
    gathering the arrays (a change made in place to an entry is a change of the vector). Copies and pickles are
    plain dicts.
    """

    __slots__ = ("flat_source",)

    def __reduce__(self):
        return dict, (dict(self),)


class Program:
    """The flattened form of one flow, built from its layers' specs; see :mod:`nflow_np.kernels.program`."""

    def __init__(self, flow):
        base = flow.distribution.lower()
        self.dtype = np.dtype(flow.dtype)
        self.d = d = int(flow.event_shape[0]) if flow.event_shape else 0
        if not isinstance(base, (specs.StandardNormalSpec, specs.UniformSpec)) or base.d != d:
            raise prog.Unsupported("the base distribution is neither a standard normal nor a uniform box over the "
                                   "flow's coordinates")
        self.base = base
        self.base_kind = prog.BASE_UNIFORM if isinstance(base, specs.UniformSpec) else prog.BASE_NORMAL
        # the layers' context width (an embedding, run in NumPy, maps the raw context to it first)
        self.context_size = c = int(flow.bijector.context_size)
        self.layers = flow.bijector.flatten()
        self.specs = []        # each layer's spec, in density order
        ops, fields, clamps, idata, pmask = [], [], [], [0], []
        self.slots = []        # (params dict, key, offset, size)
        self.batchnorms = []   # (layer index, spec); their running statistics follow the parameters
        self.transform_constants = []    # (layer index, floats): a frame's transform constants (a circular shift: its
        # bound and period) follow the parameters in theta
        self.entry_names = []  # each layer's compiled entry: its op, and a frame's transform ("coupling.affine")
        self.transforms = []   # each layer's transform name (None: not a frame)
        self.actnorms = []     # each ActNorm's state: compiled calls wait until it has seen data
        cache = [0]            # per-row cache floats so far
        # "weights": the largest product per row of any pass; "sampling": of the sampling pass, where a MADE
        # multiplies blocks of its weights (made_pack_index)
        widest = {"net": 1, "cond": 1, "hidden": 1, "weights": 1, "sampling": 1}
        made = []              # (layer index, parameter offset, widths, degree groups, generation) of each MADE

        def ints(values):
            off = len(idata)
            values = [int(v) for v in values]
            idata.extend([len(values)] + values)
            return off

        def add_params(params, keys, mask=None):
            start = len(pmask)
            for key in keys:
                arr = params[key]
                self.slots.append((params, key, len(pmask), arr.size))
                m = np.ones(arr.size) if mask is None or key not in mask else np.asarray(mask[key]).ravel()
                pmask.extend(m.tolist())
            return start

        def add_net(net):
            if net.activation not in ACTIVATION_CODES:
                raise prog.Unsupported(f"activation {net.activation!r} is not compiled")
            if net.context and net.masks is not None:
                raise prog.Unsupported("conditional MADE networks (MAF with a context) are not compiled")
            widths = net.widths
            keys = list(net.keys)
            masks = None if net.masks is None else dict(zip(keys[::2], net.masks))
            off = add_params(net.params, keys, masks)
            widest["hidden"] = max([widest["hidden"]] + list(net.hidden))
            widest["net"] = max(widest["net"], widths[-1])
            widest["weights"] = max([widest["weights"]] + [widths[i] * widths[i + 1] for i in range(len(widths) - 1)])
            if net.masks is None or net.residual:
                widest["sampling"] = max([widest["sampling"]] + [widths[i] * widths[i + 1]
                                                                 for i in range(len(widths) - 1)])
            return off, widths

        frame_nets = []        # each layer's (network spec, widths), or (None, None)
        for b in self.layers:
            f = [0] * prog.N_FIELDS
            clamp = 0.0
            net_of_layer = (None, None)
            if b.dtype is not None and b.dtype != self.dtype:
                raise prog.Unsupported(f"{b.name} has dtype {b.dtype}")
            spec = b.lower(d)
            self.specs.append(spec)
            name = None
            if isinstance(spec, (specs.CouplingSpec, specs.AutoregressiveSpec)):
                name = transforms.name_for(spec.transform)
                if name is None:
                    raise prog.Unsupported(f"{b.name}: transform {type(spec.transform).__name__} is not compiled")
                f[prog.F_THETA], widths = add_net(spec.net)
                net_of_layer = (spec.net, widths)
                f[prog.F_WIDTHS], f[prog.F_ACT] = ints(widths), network_code(spec.net)
                f[prog.F_CACHE] = cache[0]
                f[prog.F_PARAMS] = spec.transform.outputs_per_coordinate
                self.transform_constants.append((len(ops), transforms.module_for(name).constants(spec.transform)))
            if isinstance(spec, specs.CouplingSpec):
                f[prog.F_A], f[prog.F_B] = ints(spec.conditioned), ints(spec.transformed)
                f[prog.F_FLAG] = int(bool(spec.by_coordinate))
                widest["cond"] = max(widest["cond"], widths[0])
                cache[0] += widths[0] + hidden_size(widths) + widths[-1]
                op = prog.OP_COUPLING
            elif isinstance(spec, specs.AutoregressiveSpec):
                f[prog.F_A], f[prog.F_B] = ints([]), ints(spec.generation)
                f[prog.F_GROUPS] = len(idata)
                groups = degree_groups(spec.net.degrees, d)
                idata.extend(groups.tolist())
                if not spec.net.residual:
                    made.append((len(ops), f[prog.F_THETA], widths, groups, np.asarray(spec.generation)))
                widest["cond"] = max(widest["cond"], d)     # the backward keeps its direct gradients there
                cache[0] += hidden_size(widths) + widths[-1]
                op = prog.OP_AUTOREGRESSIVE
            elif isinstance(spec, specs.PermutationSpec):
                f[prog.F_A], f[prog.F_B] = ints(spec.density), ints(spec.sampling)
                op = prog.OP_PERMUTE
            elif isinstance(spec, specs.ActNormSpec):
                f[prog.F_THETA] = add_params(spec.params, ["log_scale", "shift"])
                self.actnorms.append(spec.state)
                op = prog.OP_ACTNORM
            elif isinstance(spec, specs.BatchNormSpec):
                f[prog.F_THETA] = add_params(spec.params, ["log_gamma", "beta"])
                self.batchnorms.append((len(ops), spec))
                clamp = spec.eps
                op = prog.OP_BATCHNORM
            elif isinstance(spec, specs.CircularShiftSpec):
                f[prog.F_THETA] = add_params(spec.params, ["shift"])
                f[prog.F_PARAMS] = spec.params["shift"].size     # one angle per coordinate, or one for all
                self.transform_constants.append((len(ops), (spec.bound, 2.0 * spec.bound)))
                op = prog.OP_CIRCULAR_SHIFT
            else:
                raise prog.Unsupported(f"{b.name}: spec {type(spec).__name__} is not compiled")
            ops.append(op)
            self.entry_names.append(prog.OP_NAMES[op] + ("" if name is None else "." + name))
            self.transforms.append(name)
            fields.append(f)
            clamps.append(clamp)
            frame_nets.append(net_of_layer)

        self.ops = np.array(ops, dtype=np.int64)
        self.fields = np.array(fields, dtype=np.int64).reshape(len(ops), prog.N_FIELDS)
        # the layouts (indices into NETWORK_ENTRIES) of the frames' networks when scoring or sampling, and when
        # training: a plain coupling network small enough runs by unit (frames._by_units)
        self.network_layouts = (set(), set())
        for op, (net, widths) in zip(ops, frame_nets):
            if net is None:
                continue
            plain = op == prog.OP_COUPLING and not net.residual
            for k, limit in enumerate((SMALL_NETWORK, SMALL_TRAINING_NETWORK)):
                small = all(widths[i] * widths[i + 1] <= limit for i in range(len(widths) - 1))
                self.network_layouts[k].add(1 if plain and small else 0)
        # in the parameters' dtype, so float32 programs evaluate tanh and exp in single precision
        self.clamps = np.array(clamps, dtype=self.dtype)
        self.idata = np.array(idata, dtype=np.int64)
        self.n_params = len(pmask)
        # running statistics and momentum of each BatchNorm: [mean (d), var (d), momentum]
        self.buffer_slots, self.constants = [], []
        for layer, spec in self.batchnorms:
            start = len(pmask)
            self.fields[layer, prog.F_B] = start
            self.buffer_slots += [(spec.state.__dict__, "running_mean", start, d),
                                  (spec.state.__dict__, "running_var", start + d, d)]
            self.constants.append((start + 2 * d, spec.momentum))
            pmask.extend([1.0] * (2 * d + 1))
        for layer, values in self.transform_constants:
            start = len(pmask)
            self.fields[layer, prog.F_CONSTS] = start
            self.constants += [(start + k, value) for k, value in enumerate(values)]
            pmask.extend([1.0] * len(values))
        base_at = len(pmask)
        if self.base_kind == prog.BASE_UNIFORM:
            # the log-density inside the box, summed in the dtype as the NumPy base sums it, then the box
            inside = self.dtype.type(0)
            for value in base.log_widths.astype(self.dtype):
                inside += -value
            values = [inside] + [v for arr in (base.low, base.high, base.span, base.half)
                                 for v in arr.astype(self.dtype)]
            self.constants += [(base_at + k, value) for k, value in enumerate(values)]
            pmask.extend([1.0] * len(values))
        # last, each MADE's weights packed by degree, gathered from the effective parameters by a sampling call
        pack = []
        for layer, off, widths, groups, generation in made:
            self.fields[layer, prog.F_PACK] = len(pmask) + sum(p.size for p in pack)
            index, block = made_pack_index(off, widths, groups, generation, d)
            pack.append(index)
            widest["sampling"] = max(widest["sampling"], block)
        self._pack_src = np.concatenate(pack) if pack else np.zeros(0, np.int64)
        self._pack_at = len(pmask)
        pmask.extend([1.0] * self._pack_src.size)
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
        layout = [offsets[k] for k in range(prog.W_ROW)] + [row, self.n_params,
                                                             offsets[prog.W_CTX], c, self.base_kind, base_at]
        self.layout = np.array(layout, dtype=np.int64)
        self.parallel_chunks = CHUNK * widest["weights"] <= BLAS_SINGLE_THREAD
        self.parallel_sampling = CHUNK * widest["sampling"] <= BLAS_SINGLE_THREAD
        # each slot's name in flow.parameters(), so gradients come back keyed like the optimizer's arrays
        by_id = {id(arr): name for name, arr in flow.parameters()}
        self.names = [by_id[id(params[key])] for params, key, _, _ in self.slots]
        # what theta() and gradients() need per call, laid out once: the parameters fill theta[:n_params] in slot
        # order, end to end (add_params appends them so), and the constants are scattered by index
        self._slot_sizes = [size for _, _, _, size in self.slots]
        packed = 0
        for _, _, off, size in self.slots:
            if off != packed:
                raise AssertionError("the parameter slots are not packed end to end")
            packed += size
        self._const_at = np.array([off for off, _ in self.constants], dtype=np.int64)
        self._const_values = np.array([value for _, value in self.constants], dtype=self.dtype)
        self._named_slots = [(name, params, key, off, size) for name, (params, key, off, size)
                             in zip(self.names, self.slots)]

    @staticmethod
    def _signature(flow):
        return (id(flow.bijector),) + tuple((id(b), type(b)) for b in flow.bijector.flatten())

    # ------------------------------------------------------------------ parameters
    def theta(self):
        """The flow's current parameters, then its running statistics, flat.

        Read afresh on every call, from the arrays the layers' ``params`` hold now: an array changed in place or
        replaced (of the same size) since the last call is what the next compiled call runs on.
        """
        theta = np.empty(self.size, dtype=self.dtype)
        arrays = [params[key] for params, key, _, _ in self.slots]
        if [arr.size for arr in arrays] != self._slot_sizes:
            for arr, (_, key, _, size) in zip(arrays, self.slots):
                if arr.size != size:
                    raise ValueError(f"parameter {key!r} changed size from {size} to {arr.size}; rebuild the flow")
        if arrays:
            # one copy into theta[:n_params] (the slots are packed in this order), cast as an assignment casts
            np.concatenate([arr.reshape(-1) for arr in arrays], out=theta[:self.n_params], casting="unsafe")
        for params, key, off, size in self.buffer_slots:
            arr = params[key]
            if arr.size != size:
                raise ValueError(f"parameter {key!r} changed size from {size} to {arr.size}; rebuild the flow")
            theta[off:off + size] = arr.reshape(-1)
        theta[self._const_at] = self._const_values
        theta[self._pack_at:] = 0.0
        return theta

    def write_back(self, theta, params=True):
        """Copy a flat vector into the flow's running statistics and (with ``params``) parameters, in place."""
        for owner, key, off, size in (self.slots if params else []) + self.buffer_slots:
            owner[key][...] = theta[off:off + size].reshape(owner[key].shape)

    def batch_statistics(self):
        """Whether a BatchNorm layer is in training mode (its density pass couples the rows of a batch)."""
        return any(spec.state.training for _, spec in self.batchnorms)

    def gradients(self, gtheta):
        """A flat gradient as a dict keyed like ``flow.parameters()``: views of ``gtheta``, one disjoint slice per
        parameter (the caller hands over a fresh ``gtheta``: nothing else holds or reuses it). The dict is a
        :class:`FlatGradients`, which lets an optimizer take the flat vector whole."""
        views = [gtheta[off:off + size].reshape(params[key].shape) for _, params, key, off, size in self._named_slots]
        grads = FlatGradients(zip(self.names, views))
        grads.flat_source = (gtheta[:self.n_params], self.names, views)
        return grads

    # ------------------------------------------------------------------ buffers
    def workspace(self, rows, parts=1):
        return np.empty((parts, rows * int(self.layout[prog.W_ROW])),
                        dtype=self.dtype)

    def _borrow_workspace(self, rows):
        """A one-part workspace for ``rows`` rows: one a previous call gave back, or a new one. A borrowed workspace
        belongs to its caller alone until :meth:`_return_workspace` (calls on other threads borrow others)."""
        try:
            return self.__dict__["_spare"][rows].pop()
        except (KeyError, IndexError):
            return self.workspace(rows)[0]

    def _return_workspace(self, rows, ws):
        """Keep ``ws`` for the next call on ``rows`` rows: one per size, for the last few sizes, none above
        SPARE_BYTES (a large batch amortizes its own allocation)."""
        if ws.nbytes > SPARE_BYTES:
            return
        spare = self.__dict__.setdefault("_spare", {})
        if rows not in spare and len(spare) >= SPARE_SIZES:
            spare.clear()
        held = spare.setdefault(rows, [])
        if not held:
            held.append(ws)

    def _arrays(self):
        """``(meta, clamps)`` for the compiled runner, with each BatchNorm's current mode.

        ``meta`` is packed again only when what it holds changed: a BatchNorm's mode or the addresses of the
        compiled networks (:meth:`table` fills them in); the kernels only read it.
        """
        modes = tuple(int(spec.state.training) for _, spec in self.batchnorms)
        networks = self.__dict__.get("_networks", (0, 0, 0, 0))
        key = (modes,) + tuple(int(a) for a in networks)
        cached = self.__dict__.get("_meta")
        if cached is not None and cached[0] == key:
            return cached[1], self.clamps
        for (layer, _), mode in zip(self.batchnorms, modes):
            self.fields[layer, prog.F_FLAG] = mode
        from .compiled import pack_meta
        meta = pack_meta(self.fields, self.idata, self.layout, self.size, networks)
        self.__dict__["_meta"] = (key, meta)
        return meta, self.clamps

    def table(self, *passes, loops=()):
        """The entry addresses of every layer (``layers x 3``), with those of ``passes`` compiled and filled in;
        ``loops`` (names in :data:`~.compiled.LOOPS`) are compiled alongside, on every core (:mod:`.warm`)."""
        ready = self.__dict__.setdefault("_ready", set())
        if (passes, loops) in ready:        # every call after the first: no Python work per layer
            return self._table
        from . import compiled
        table = self.__dict__.setdefault("_table", np.zeros((len(self.ops), compiled.PASSES), dtype=np.int64))
        done = self.__dict__.setdefault("_loops", set())
        keys = self.keys(*passes, loops=loops)
        if keys:
            from .warm import compile_entries
            compile_entries(keys, compiled.compile_key)
            for p in passes:
                for layer, name in enumerate(self.entry_names):
                    table[layer, p] = compiled.entry_address(name, p, self.dtype)
            networks = self.__dict__.setdefault("_networks", np.zeros(4, dtype=np.int64))
            for name, p, _ in keys:
                if name in NETWORK_ENTRIES:
                    networks[2 * NETWORK_ENTRIES.index(name) + int(p == compiled.BACKWARD)] = \
                        compiled.entry_address(name, p, self.dtype)
            done.update(loops)
        ready.add((passes, loops))
        return table

    def keys(self, *passes, loops=()):
        """The compile keys (:mod:`.warm`) of ``passes`` and ``loops`` that this program has not loaded yet."""
        from . import compiled
        table = self.__dict__.get("_table")
        done = self.__dict__.get("_loops", set())
        keys = [(name, p, self.dtype.name) for p in passes for layer, name in enumerate(self.entry_names)
                if table is None or not table[layer, p]]
        # the frames call their networks' compiled forward (density, sampling) and backward passes, each in the
        # layout the frame runs it in (network_layouts)
        networks = self.__dict__.get("_networks", np.zeros(4, dtype=np.int64))
        training = compiled.BACKWARD in passes
        needed = []
        if compiled.SAMPLING in passes or (compiled.DENSITY in passes and not training):
            needed += [(layout, compiled.DENSITY) for layout in self.network_layouts[0]]
        if training:
            needed += [(layout, p) for layout in self.network_layouts[1] for p in (compiled.DENSITY, compiled.BACKWARD)]
        keys += [(NETWORK_ENTRIES[layout], p, self.dtype.name) for layout, p in needed
                 if not networks[2 * layout + int(p == compiled.BACKWARD)]]
        keys += [(compiled.LOOPS.index(name), compiled.LOOP, self.dtype.name) for name in loops if name not in done]
        return list(dict.fromkeys(keys))

    def prefetch(self, *passes, loops=()):
        """Start compiling ``passes`` and ``loops`` in a helper process, for a call that probably comes next."""
        from . import compiled
        from .warm import prefetch
        prefetch([(name, p, self.dtype.name) for p in passes for name in sorted(set(self.entry_names))]
                 + [(compiled.LOOPS.index(name), compiled.LOOP, self.dtype.name) for name in loops])

    def _geometry(self, n, sampling=False):
        """``(parts, chunk)``: how many threads share ``n`` rows (of a sampling pass), and the rows per chunk."""
        chunk = min(CHUNK, n)
        if not (self.parallel_sampling if sampling else self.parallel_chunks) or n < 8 * CHUNK:
            return 1, chunk
        import numba
        return max(1, min(numba.get_num_threads(), n // (4 * CHUNK))), chunk

    def _effective(self):
        theta = self.theta()
        theta *= self.pmask
        return theta

    def _rows(self, kernel, n, pass_, *arrays):
        """Run ``kernel`` over rows ``0..n`` in chunks, split over threads when the batch is large."""
        from .compiled import SAMPLING
        parts, chunk = self._geometry(n, pass_ == SAMPLING)
        table = self.table(pass_, loops=(kernel.__name__,))
        meta, clamps = self._arrays()
        theta = self._effective()
        if pass_ == SAMPLING:
            theta[self._pack_at:] = theta[self._pack_src]
        ws = self.workspace(chunk, parts)
        per_part = -(-n // parts)
        calls = [(table, meta, clamps, theta, *arrays, ws[k], chunk, k * per_part, min(n, (k + 1) * per_part))
                 for k in range(parts)]
        if parts == 1:
            kernel(*calls[0])
        else:   # the kernels release the GIL
            for future in [_pool().submit(kernel, *args) for args in calls]:
                future.result()

    # ------------------------------------------------------------------ whole-flow calls
    def context_rows(self, context, n):
        """The context as contiguous ``(n, c)`` rows (``(n, 0)`` for an unconditional flow)."""
        if context is None:
            return np.empty((n, self.context_size), dtype=self.dtype)
        return np.ascontiguousarray(np.broadcast_to(context, (n, self.context_size)), dtype=self.dtype)

    def log_prob(self, x, context=None):
        """Log-densities of rows ``x`` (n, d) given ``context`` rows (n, c), validated by the caller."""
        n = x.shape[0]
        out = np.empty(n, dtype=self.dtype)
        if n:
            from .compiled import DENSITY, log_prob_rows
            self._rows(log_prob_rows, n, DENSITY, np.ascontiguousarray(x), self.context_rows(context, n), out)
        return out

    def sample(self, z, context=None):
        """``(forward(z), log p(forward(z)))`` for base points ``z`` (n, d) and ``context`` rows."""
        n = z.shape[0]
        x = np.empty_like(z)
        log_prob = np.empty(n, dtype=self.dtype)
        if n:
            from .compiled import SAMPLING, sample_rows
            self._rows(sample_rows, n, SAMPLING, np.ascontiguousarray(z), self.context_rows(context, n), x, log_prob)
        return x, log_prob

    def nll_and_grad(self, x, context=None):
        """Mean NLL of rows ``x`` (given ``context`` rows) and the flat gradient with respect to ``theta``."""
        from .compiled import BACKWARD, DENSITY, nll_grad
        gtheta = np.zeros(self.size, dtype=self.dtype)
        theta = self._effective()
        table = self.table(DENSITY, BACKWARD, loops=("nll_grad",))
        n = x.shape[0]
        ws = self._borrow_workspace(n)
        loss = nll_grad(table, *self._arrays(), theta, self.pmask, np.ascontiguousarray(x),
                        self.context_rows(context, n), ws, gtheta)
        self._return_workspace(n, ws)
        if self.buffer_slots:
            self.write_back(theta, params=False)   # BatchNorm's running statistics moved
        return float(loss), gtheta


_pool_holder = []
_pool_lock = threading.Lock()


def _pool():
    """One process-wide thread pool for splitting large batches."""
    if not _pool_holder:
        with _pool_lock:
            if not _pool_holder:
                import os
                from concurrent.futures import ThreadPoolExecutor
                _pool_holder.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                       thread_name_prefix="nflow_np"))
    return _pool_holder[0]


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


class AdamExchange:
    """Adam's state between the optimizer and a compiled trainer's flat buffers, through its public API.

    At an epoch's start :meth:`read` fills flat ``m``/``v`` from ``optimizer.m``/``optimizer.v`` (the live
    moments) and returns the hyperparameters as the compiled step reads them, float64
    ``[lr, beta1, beta2, eps, weight_decay, clip_norm, largest]``, with the step count; :meth:`write`
    copies the moments back in place and sets ``lr`` and ``steps``, so everything between epochs
    (validation, callbacks, ``state_dict``) sees the usual optimizer.
    """

    def __init__(self, program, optimizer):
        self.program = program
        self.optimizer = optimizer

    def _slots(self):
        return zip(self.program.names, self.program.slots)

    def read(self, m, v):
        opt = self.optimizer
        for (name, (_, _, off, size)) in self._slots():
            m[off:off + size] = opt.m[name].reshape(-1)
            v[off:off + size] = opt.v[name].reshape(-1)
        hyper = np.array([opt.lr, opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay or 0.0, opt.clip_norm or 0.0,
                          np.finfo(self.program.dtype).max], dtype=np.float64)
        return hyper, opt.steps

    def write(self, m, v, lr, steps):
        opt = self.optimizer
        for (name, (_, _, off, size)) in self._slots():
            opt.m[name][...] = m[off:off + size].reshape(opt.m[name].shape)
            opt.v[name][...] = v[off:off + size].reshape(opt.v[name].shape)
        opt.lr = float(lr)
        opt.steps = int(steps)


class NumbaTrainer:
    """Whole epochs of Adam steps in one compiled call, on buffers allocated once.

    The flat parameters and Adam's moments are read from the flow and the
    optimizer at the start of every epoch and written back at its end
    (:class:`AdamExchange`), so everything between epochs sees and may change
    the usual arrays.
    """

    def __init__(self, program, optimizer, batch_size):
        self.program = program
        self.adam = AdamExchange(program, optimizer)
        size = program.size
        self.theta_eff = np.empty(size, dtype=program.dtype)
        self.gtheta = np.zeros(size, dtype=program.dtype)
        self.m = np.zeros(size, dtype=program.dtype)
        self.v = np.zeros(size, dtype=program.dtype)
        # the divergence rule's level, and the state where the last loss that passed it was measured: both carry
        # over from epoch to epoch
        self.watch = np.zeros(3, dtype=np.float64)
        self.prev = np.zeros(size, dtype=program.dtype)
        # the parameters' moving average (fit's ``average``) and its [decay cap, count]; a cap of 0 keeps it off
        self.avg = np.zeros(program.n_params, dtype=program.dtype)
        self.average = np.zeros(2, dtype=np.float64)
        self.ws = program.workspace(batch_size)[0]
        self.batch_size = batch_size
        self.state = np.zeros(2, dtype=np.int64)
        from .compiled import BACKWARD, DENSITY, SAMPLING
        from .warm import uncompiled
        after = dict(loops=("log_prob_rows", "sample_rows"))      # after a fit come log-densities and samples
        if uncompiled(program.keys(DENSITY, BACKWARD, loops=("train_epoch",))):
            # a cold cache: compile theirs too, now, in one deal, so that the passes of an entry, which share
            # its network and transform code, compile in one process and the loops in another
            program.table(DENSITY, BACKWARD, SAMPLING, loops=("train_epoch",) + after["loops"])
        else:
            program.prefetch(SAMPLING, **after)
        program.table(DENSITY, BACKWARD, loops=("train_epoch",))

    def level(self):
        """The divergence rule's ``[level, spread, seen]``."""
        return self.watch.copy()

    def kept_state(self):
        """The flat state where the last loss that passed the divergence rule was measured."""
        return self.prev.copy()

    def start_average(self, beta):
        """Start the parameters' moving average at the flow's parameters, its decay capped at ``beta``."""
        self.avg[:] = self.program.theta()[:self.program.n_params]
        self.average[:] = (beta, 0.0)

    def averaged(self):
        """The parameters' moving average, flat (the first ``n_params`` entries of a state vector)."""
        return self.avg.copy()

    def epoch(self, data, order, context=None):
        """Run one epoch over ``data[order]`` (and ``context[order]``); returns the per-step losses (NaN where a
        step was rejected, +inf where the divergence rule rejected it)."""
        from .compiled import BACKWARD, DENSITY, train_epoch
        program = self.program
        theta = program.theta()
        hyper, steps = self.adam.read(self.m, self.v)
        self.state[:] = (steps, 0)
        losses = np.empty(-(-len(data) // self.batch_size), dtype=np.float64)
        train_epoch(program.table(DENSITY, BACKWARD), *program._arrays(), theta, self.theta_eff, program.pmask, data,
                    program.context_rows(context, len(data)), order, self.batch_size, self.ws, self.gtheta, self.m,
                    self.v, hyper, self.state, losses, self.watch, self.prev, self.avg, self.average)
        program.write_back(theta)
        self.adam.write(self.m, self.v, hyper[0], self.state[0])
        return losses
