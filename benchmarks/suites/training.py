"""Training cost: seed 001's whole job (W1) and single Adam steps (W2, W3, W4's MAF, W7's NSF), float32.

Every class is parametrized over the backend. ``setup`` builds the flow, the
data and runs one warm-up call, so Numba's compile time never lands in a
timing (it has its own benchmark in ``startup.py``). A timed ``fit`` call
makes ``workloads.STEPS_PER_CALL`` (20) steps: divide a ``time_steps`` result
by 20 for the time of one step. W2 is also timed in a user's own loop
(``value_and_grad`` + ``Adam.step``, ``workloads.own_loop_call``): the same 20
steps, so ``time_own_loop`` over ``W2RealNVP8D.time_steps`` is the cost of
the Python between the compiled calls.
"""

from ._common import workloads as wl


class W1Seed001Job:
    """Seed 001 end to end: 2-D RealNVP (4 couplings, hidden (8, 8)), 100 epochs, batch 64, 2000 points."""

    params = list(wl.BACKENDS)
    param_names = ["backend"]
    # One call is 3200 steps (seconds on the numpy backend): a few samples are plenty.
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    timeout = 600

    def setup(self, backend):
        wl.require_backend(backend)
        self.train, _ = wl.w1_data()
        # compile and warm caches on a throwaway flow, one epoch
        wl.w1_job(wl.w1_flow(), self.train, backend, epochs=1)

    def time_job(self, backend):
        wl.w1_job(wl.w1_flow(), self.train, backend)


class _Steps:
    """Adam steps of one workload through ``fit``; subclasses name the workload."""

    workload = None
    params = list(wl.BACKENDS)
    param_names = ["backend"]
    warmup_time = 0.0
    timeout = 600

    def setup(self, backend):
        wl.require_backend(backend)
        self.batch = wl.SPECS[self.workload]["batch"]
        self.flow = wl.build_flow(self.workload)
        self.data = wl.step_data(self.workload)
        wl.fit_call(self.flow, self.data, self.batch, backend)

    def time_steps(self, backend):
        """20 Adam steps (one per batch), as one ``fit(..., epochs=1)`` call."""
        wl.fit_call(self.flow, self.data, self.batch, backend)

    def peakmem_steps(self, backend):
        wl.fit_call(self.flow, self.data, self.batch, backend)


class W2RealNVP8D(_Steps):
    """D=8 RealNVP, 8 couplings, hidden (64, 64), batch 256."""

    workload = "W2"


class W3RealNVP64D(_Steps):
    """D=64 RealNVP, 5 couplings, hidden (256, 256), batch 1024 (BLAS-bound)."""

    workload = "W3"


class W4MAFTrain(_Steps):
    """D=8 MAF, 5 layers, hidden (64, 64), batch 256."""

    workload = "W4"


class W7NSFTrain(_Steps):
    """D=8 neural spline flow, 5 spline couplings (8 bins on [-5, 5]), hidden (64, 64), batch 256."""

    workload = "W7"


class W2OwnLoop:
    """W2's 20 Adam steps in the loop a user writes: ``value_and_grad`` then ``Adam.step`` per batch."""

    params = list(wl.BACKENDS)
    param_names = ["backend"]
    warmup_time = 0.0
    timeout = 600

    def setup(self, backend):
        wl.require_backend(backend)
        self.batch = wl.SPECS["W2"]["batch"]
        self.flow = wl.build_flow("W2")
        self.data = wl.step_data("W2")
        wl.own_loop_call(self.flow, self.data, self.batch, backend)

    def time_own_loop(self, backend):
        """20 steps of value_and_grad + Adam.step, a new Adam per call (as fit makes one)."""
        wl.own_loop_call(self.flow, self.data, self.batch, backend)
