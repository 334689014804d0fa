"""Whole flows on the GPU: a :class:`~nflow_np.kernels.plan.Program` run on the device, and its trainer.

:func:`runner_for` wraps a program in a :class:`DeviceProgram` (or returns None
when the program holds an op the device kernels do not cover, so the caller
falls back to the NumPy passes, as ``"numba"`` does for flows it cannot compile).
A :class:`DeviceProgram` answers the calls a ``Program`` answers (``log_prob``,
``sample``, ``nll_and_grad``, ``gradients``), so the flow and the losses use it
in the program's place, plus :meth:`DeviceProgram.draw`, sampling with the base
points drawn on the device.

:class:`DeviceTrainer` runs whole Adam epochs on the device: the data are copied
once per ``fit``, each epoch's permutation once per epoch, the mini-batches are
gathered by it on the device, and the parameters, moments and step count stay
there during the epoch; the host sees the per-step losses (and the parameters,
for validation, callbacks and the best-epoch snapshot) once per epoch. Every
guard of the CPU trainer holds: a step whose loss or gradient is not finite, or
whose update would overflow, is rejected and halves the learning rate; so is a
step whose loss diverged, which also puts the state back (the divergence rule
of :func:`nflow_np.train.fit`).

Computation runs in the flow's dtype: build a float32 flow (``dtype=np.float32``)
for the GPU's native precision; a float64 flow runs in float64, never cast.
"""

import numpy as np

from .. import program as prog
from .. import transforms
from ..plan import AdamExchange
from ..backend import resolve_backend
from .device import Scratch, as_device, cuda, empty, is_device_array
from .elementwise import copy_tail_cuda, gather_rows_cuda, masked_copy_cuda, nll_head_cuda, normal_log_prob_cuda, \
    philox_normal_cuda
from .flow import SUPPORTED_OPS, Layer, Workspace, density_backward, density_pass, sampling_pass
from .optim import average_step_cuda, guarded_adam_step_cuda
from .reduce import vector_sum
from .torus import philox_uniform_cuda, uniform_log_prob_cuda, uniform_nll_head_cuda

__all__ = ["DeviceProgram", "DeviceTrainer", "runner_for", "covers", "log_prob_on_device", "WORKSPACE_BYTES"]

# device memory for an inference chunk's workspace; larger inputs are processed in chunks of rows
WORKSPACE_BYTES = 1 << 29


def covers(program):
    """``(True, "")`` when the device kernels cover every op of ``program``, else ``(False, reason)``."""
    if getattr(program, "context_size", 0):
        return False, "the CUDA kernels do not cover conditional flows (a context)"
    missing = sorted(set(int(op) for op in program.ops) - SUPPORTED_OPS)
    if missing:
        names = {getattr(prog, k): k for k in dir(prog) if k.startswith("OP_")}
        return False, "the CUDA kernels do not cover " + ", ".join(names.get(op, str(op)) for op in missing)
    # the frames run any transform with a module in kernels.transforms
    unknown = sorted(set(name for name in program.transforms if name is not None) - set(transforms.MODULES))
    if unknown:
        return False, "the CUDA frames do not cover the transforms " + ", ".join(unknown)
    if program.dtype not in (np.float32, np.float64):
        return False, f"the CUDA kernels run float32 or float64, not {program.dtype}"
    return True, ""


def runner_for(program):
    """The program's :class:`DeviceProgram` (built once), or None when the device kernels do not cover it."""
    if not covers(program)[0]:
        return None
    runner = program.__dict__.get("_device_program")
    if runner is None:
        runner = program.__dict__["_device_program"] = DeviceProgram(program)
    return runner


class DeviceProgram:
    """A program's parameters, layers and workspaces on the device, answering a ``Program``'s calls."""

    def __init__(self, program):
        self.program = program
        self.dtype = program.dtype
        self.d = program.d
        self.work = Scratch()
        batchnorms = {layer: spec.state for layer, spec in program.batchnorms}
        self.layers = [Layer(program, i, batchnorms.get(i)) for i in range(len(program.ops))]
        self.theta = empty(program.size, self.dtype)       # effective (masked) parameters and running statistics
        # zeros: the kernels write the parameters' slots only, and the tail (running statistics, transform
        # constants) goes through the masked copies; garbage there could be a signalling NaN
        self.gtheta = cuda.to_device(np.zeros(program.size, self.dtype))
        for layer in self.layers:
            layer.bind(self.theta, self.gtheta, self.d)
        self._inference = None
        self._keeping = None
        self._pmask = None
        # a uniform box base: its constants ([inside, low, high, span, half]), fixed, on the device once
        self.base = None
        if program.base_kind == prog.BASE_UNIFORM:
            at = int(program.layout[prog.W_BASEC])
            self.base = cuda.to_device(np.ascontiguousarray(program.theta()[at:at + 1 + 4 * self.d]))

    def _base_log_prob(self, z, out, sign=1):
        """``out = sign * out + log p_base(z)`` per row."""
        if self.base is None:
            normal_log_prob_cuda(z, out, sign=sign)
        else:
            uniform_log_prob_cuda(z, self.base, out, sign=sign)

    @property
    def actnorms(self):
        return self.program.actnorms

    def batch_statistics(self):
        return self.program.batch_statistics()

    def gradients(self, gtheta):
        return self.program.gradients(gtheta)

    # ------------------------------------------------------------------ buffers
    def _upload(self):
        self.theta.copy_to_device(np.ascontiguousarray(self.program.theta() * self.program.pmask))

    def _chunk(self, n):
        per_row = Workspace.row_floats(self.layers, self.d, False) * self.dtype.itemsize
        return max(1, min(n, WORKSPACE_BYTES // per_row))

    def _inference_views(self, rows, m):
        if self._inference is None or self._inference.rows < rows:
            self._inference = Workspace(self.layers, self.d, rows, self.dtype, keep=False)
        return self._inference.views(m)

    def keeping_workspace(self, rows):
        """A workspace keeping every layer's caches for ``rows`` rows (one, kept for reuse)."""
        if self._keeping is None or self._keeping.rows < rows:
            self._keeping = Workspace(self.layers, self.d, rows, self.dtype, keep=True)
        return self._keeping

    @staticmethod
    def _no_context(context, where):
        if context is not None:
            raise ValueError(f"{where}: the CUDA kernels run unconditional flows; got a context")

    def _input(self, x, where):
        if is_device_array(x):
            x = as_device(x)
            if np.dtype(x.dtype) != self.dtype:
                raise TypeError(f"{where}: the device array is {np.dtype(x.dtype)} but the flow is {self.dtype}; "
                                f"convert it on the device first")
            if not x.is_c_contiguous():
                raise ValueError(f"{where}: the device array must be C-contiguous")
            return x, True
        return cuda.to_device(np.ascontiguousarray(x, dtype=self.dtype)), False

    # ------------------------------------------------------------------ whole-flow calls
    def log_prob(self, x, context=None):
        """Log-densities of rows ``x`` (n, d), NumPy or device; the result lives where ``x`` does."""
        self._no_context(context, "log_prob")
        x, on_device = self._input(x, "log_prob")
        n = x.shape[0]
        out = empty(n, self.dtype)
        if n:
            self._upload()
            chunk = self._chunk(n)
            for start in range(0, n, chunk):
                m = min(chunk, n - start)
                v = self._inference_views(chunk, m)
                ld = out[start:start + m]          # the log-dets accumulate in the output itself
                z = density_pass(self.layers, self.theta, v, x[start:start + m], ld, self.work)
                self._base_log_prob(z, ld)
        return out if on_device else out.copy_to_host()

    def _sample_on_device(self, z):
        n = z.shape[0]
        x = empty((n, self.d), self.dtype)
        log_prob = empty(n, self.dtype)
        if n:
            self._upload()
            chunk = self._chunk(n)
            for start in range(0, n, chunk):
                m = min(chunk, n - start)
                v = self._inference_views(chunk, m)
                lp = log_prob[start:start + m]
                sampling_pass(self.layers, self.theta, v, z[start:start + m], x[start:start + m], lp, self.work)
                self._base_log_prob(z[start:start + m], lp, sign=-1)
        return x, log_prob

    def sample(self, z, context=None):
        """``(forward(z), log p(forward(z)))`` for base points ``z`` (n, d); results live where ``z`` does."""
        self._no_context(context, "sample")
        z, on_device = self._input(z, "sample")
        x, log_prob = self._sample_on_device(z)
        return (x, log_prob) if on_device else (x.copy_to_host(), log_prob.copy_to_host())

    def draw(self, n, rng, on_device=False):
        """``n`` samples and their log-densities, the base points drawn on the device from a seed taken from ``rng``.

        The draws are Philox4x32-10 normals (:func:`.elementwise.philox_normal_numpy`), or for a uniform box
        base its uniforms scaled into the box (:func:`.torus.philox_uniform_numpy`), not the CPU
        backends' stream: a seed gives the same samples on every device, other samples than on the CPU.
        With ``on_device`` the results stay on the device.
        """
        seed = int(rng.integers(0, 2 ** 63))
        z = empty((int(n), self.d), self.dtype)
        if self.base is None:
            philox_normal_cuda(seed, z)
        else:
            philox_uniform_cuda(seed, z, self.base)
        x, log_prob = self._sample_on_device(z)
        return (x, log_prob) if on_device else (x.copy_to_host(), log_prob.copy_to_host())

    def nll_and_grad(self, x, context=None):
        """Mean NLL of rows ``x`` and the flat gradient (host), as :meth:`Program.nll_and_grad`."""
        self._no_context(context, "nll_and_grad")
        n = x.shape[0]
        self._upload()
        v = self.keeping_workspace(n).views(n)
        v.z[0].copy_to_device(np.ascontiguousarray(x, dtype=self.dtype))
        scalars = self.work.get("nll", 1, np.float64)
        self.loss_and_backward(v, scalars)
        masked_copy_cuda(self.gtheta, self.pmask_device(), self.gtheta, self.program.size)
        theta = self.theta.copy_to_host()
        self.program.write_back(theta, params=False)   # BatchNorm's running statistics moved
        return float(scalars.copy_to_host()[0]), self.gtheta.copy_to_host()

    def pmask_device(self):
        """The parameter mask (MADE's masks; ones elsewhere) on the device, copied once."""
        if self._pmask is None:
            self._pmask = cuda.to_device(np.ascontiguousarray(self.program.pmask))
        return self._pmask

    def loss_and_backward(self, v, scalars):
        """Density pass over ``v.z[0]`` (``v.m`` rows), the mean NLL into ``scalars[0]``, gradients into gtheta."""
        m = v.m
        z = density_pass(self.layers, self.theta, v, v.z[0], v.ld, self.work)
        log_prob = self.work.get("log_prob", m, self.dtype)
        if self.base is None:
            nll_head_cuda(z, v.ld, log_prob, v.g[0], v.gld)
        else:
            uniform_nll_head_cuda(z, v.ld, self.base, log_prob, v.g[0], v.gld)
        vector_sum(log_prob, scalars[:1], scale=-1.0 / m, work=self.work)
        density_backward(self.layers, self.theta, self.gtheta, v, self.work)


class DeviceTrainer:
    """Whole epochs of guarded Adam steps on the device; the interface of
    :class:`nflow_np.kernels.plan.NumbaTrainer`."""

    def __init__(self, runner, optimizer, batch_size):
        self.runner = runner
        self.program = program = runner.program
        self.adam = AdamExchange(program, optimizer)
        self.batch_size = int(batch_size)
        size, dtype = program.size, program.dtype
        self.n_params = p = int(program.n_params)
        self.theta = empty(size, dtype)       # the parameters the optimizer moves, and the running statistics
        self.m = empty(size, dtype)
        self.v = empty(size, dtype)
        self.hyper = empty(7, np.float64)
        self.state = empty(2, np.int64)
        self.status = empty(1, np.int64)
        self.scalars = empty(3, np.float64)
        # the divergence rule's state and the state vector where the last loss that passed it was measured: both
        # carry over from epoch to epoch
        self.watch = cuda.to_device(np.zeros(4, np.float64))
        self.prev = cuda.to_device(np.zeros(size, dtype))
        self.params = (self.theta[:p], runner.gtheta[:p], self.m[:p], self.v[:p])
        # the parameters' moving average (fit's ``average``) and its [decay cap, count]; a cap of 0 keeps it off
        self.avg = empty(max(p, 1), dtype)
        self.average = np.zeros(2, np.float64)
        self.average_device = cuda.to_device(self.average)
        # the trainer's own: freed with it after the fit, where the runner lives as long as the flow
        self.workspace = Workspace(runner.layers, runner.d, self.batch_size, dtype, keep=True)
        self._data = (None, None)

    def _device_data(self, data):
        # the same array comes back every epoch of a fit: copy it once
        held, device = self._data
        if held is not data:
            device = cuda.to_device(np.ascontiguousarray(data, dtype=self.program.dtype))
            self._data = (data, device)
        return device

    def level(self):
        """The divergence rule's ``[level, spread, seen]``."""
        return self.watch.copy_to_host()[:3]

    def kept_state(self):
        """The flat state where the last loss that passed the divergence rule was measured."""
        return self.prev.copy_to_host()

    def start_average(self, beta):
        """Start the parameters' moving average at the flow's parameters, its decay capped at ``beta``."""
        p = self.n_params
        if p:
            self.avg[:p].copy_to_device(np.ascontiguousarray(self.program.theta()[:p]))
        self.average[:] = (beta, 0.0)
        self.average_device.copy_to_device(self.average)

    def averaged(self):
        """The parameters' moving average, flat (the first ``n_params`` entries of a state vector)."""
        return self.avg.copy_to_host()[:self.n_params]

    def epoch(self, data, order, context=None):
        """Run one epoch over ``data[order]``; returns the per-step losses (NaN where a step was rejected, +inf
        where the divergence rule rejected it)."""
        DeviceProgram._no_context(context, "epoch")
        program, runner = self.program, self.runner
        n_data = len(data)
        steps = -(-n_data // self.batch_size)
        self.theta.copy_to_device(program.theta())
        m, v = np.zeros(program.size, program.dtype), np.zeros(program.size, program.dtype)
        hyper, done = self.adam.read(m, v)
        self.m.copy_to_device(m)
        self.v.copy_to_device(v)
        self.hyper.copy_to_device(hyper)
        self.state.copy_to_device(np.array([done, 0], dtype=np.int64))
        data_device = self._device_data(data)
        order_device = cuda.to_device(np.ascontiguousarray(order, dtype=np.int64))
        losses = empty(max(steps, 1), np.float64)
        pmask = runner.pmask_device()
        for k in range(steps):
            start = k * self.batch_size
            v = self.workspace.views(min(self.batch_size, n_data - start))
            gather_rows_cuda(data_device, order_device, start, v.z[0])
            masked_copy_cuda(self.theta, pmask, runner.theta, program.size)
            runner.loss_and_backward(v, self.scalars)
            masked_copy_cuda(runner.gtheta, pmask, runner.gtheta, program.size)
            copy_tail_cuda(runner.theta, self.theta, self.n_params)   # running statistics moved by the pass
            guarded_adam_step_cuda(*self.params, self.hyper, self.state, self.status, self.scalars, losses, k,
                                   runner.work, watch=self.watch, full=self.theta, prev=self.prev)
            if self.average[0] > 0.0 and self.n_params:
                average_step_cuda(self.params[0], self.avg[:self.n_params], self.average_device, self.status)
        program.write_back(self.theta.copy_to_host())
        self.adam.write(self.m.copy_to_host(), self.v.copy_to_host(), self.hyper.copy_to_host()[0],
                        self.state.copy_to_host()[0])
        return losses.copy_to_host()[:steps]


def log_prob_on_device(flow, x, context=None, backend=None):
    """``flow.log_prob`` of a device array ``x``: the result stays on the device (needs ``backend="cuda"``)."""
    where = f"{flow.name}.log_prob"
    name = resolve_backend(backend, where)
    if name != "cuda":
        raise TypeError(f"{where}: x is a CUDA device array, which backend {name!r} cannot read; pass "
                        f"backend='cuda' (or set it), or a NumPy array")
    x = as_device(x)
    shape = tuple(x.shape)
    d = flow.event_shape[0] if len(flow.event_shape) == 1 else None
    if d is None or not shape or shape[-1] != d:
        raise ValueError(f"{where}: x must have shape (..., {d}) for this flow; got {shape}")
    program = None if context is not None else flow._compiled("cuda", "log_prob")
    if program is None:
        # a flow the kernels do not cover (or a conditional call): the NumPy passes, through the host
        return cuda.to_device(flow.log_prob(x.copy_to_host(), context=context, backend="numpy"))
    if not x.is_c_contiguous():
        raise ValueError(f"{where}: the device array must be C-contiguous")
    return program.log_prob(x.reshape(int(np.prod(shape[:-1], dtype=np.int64)), d)).reshape(shape[:-1])
