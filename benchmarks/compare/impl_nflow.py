"""nflow_np's side of the comparison, on one backend; the workloads are those of the asv suite (workloads.py)."""

import workloads as wl
from timing import MATMUL_SHAPES, NumpyMatmul, matmul_gflops, timed, w1_epochs


class NflowRunner:
    def __init__(self, backend):
        # No fallback: a missing backend switch or backend is an error the driver shows.
        wl.require_backend(backend)
        self.backend = backend
        self.quick = False

    def prepare(self, workload, quick):
        self.quick = quick
        if workload in wl.STEP_ONLY:
            self._prepare_steps(workload)
        else:
            getattr(self, f"_prepare_{workload}")()

    def measure(self, workload):
        if workload in wl.STEP_ONLY:
            result = {"step": self._step()}
            if workload in wl.OWN_LOOP:
                result["own_loop"] = self._own_loop_step()
            return result
        return getattr(self, f"_measure_{workload}")()

    def matmul(self):
        return matmul_gflops(NumpyMatmul(), MATMUL_SHAPES)

    # ---- W1: seed 001's whole job, and what it learned
    def _prepare_W1(self):
        self.train, self.test = wl.w1_data()
        wl.w1_job(wl.w1_flow(), self.train, self.backend, epochs=1)   # compile

    def _measure_W1(self):
        flow = wl.w1_flow()
        seconds = timed(lambda: wl.w1_job(flow, self.train, self.backend, epochs=w1_epochs(self.quick)))
        self.w1_trained = flow
        return {"job": seconds}

    def held_out_nll(self):
        return -float(self.w1_trained.log_prob(self.test, backend=self.backend).mean())

    # ---- training steps (W2, W3 and W7 time nothing else; W4 samples too)
    def _prepare_steps(self, workload):
        self.batch = wl.SPECS[workload]["batch"]
        self.flow = wl.build_flow(workload)
        self.data = wl.step_data(workload)
        wl.fit_call(self.flow, self.data, self.batch, self.backend)   # compile
        if workload in wl.OWN_LOOP:
            # its own flow, built as fit's: the two loops train side by side without sharing parameters
            self.loop_flow = wl.build_flow(workload)
            wl.own_loop_call(self.loop_flow, self.data, self.batch, self.backend)   # compile

    def _step(self):
        return timed(lambda: wl.fit_call(self.flow, self.data, self.batch, self.backend)) / wl.STEPS_PER_CALL

    def _own_loop_step(self):
        """One step of the user's own loop (value_and_grad + Adam.step), as a mean over STEPS_PER_CALL."""
        return timed(lambda: wl.own_loop_call(self.loop_flow, self.data, self.batch, self.backend)) / wl.STEPS_PER_CALL

    # ---- W4: MAF training step and sampling
    def _prepare_W4(self):
        self._prepare_steps("W4")
        self.sampler = wl.build_flow("W4")
        wl.perturb(self.sampler)
        self.n_sample = wl.SPECS["W4"]["n_sample"]
        self.sampler.sample(self.n_sample, rng=0, backend=self.backend)

    def _measure_W4(self):
        return {"step": self._step(),
                "sample": timed(lambda: self.sampler.sample(self.n_sample, rng=0, backend=self.backend))}

    # ---- W6: a million 2-D points
    def _prepare_W6(self):
        self.flow = wl.build_flow("W6")
        wl.perturb(self.flow)
        self.points = wl.w6_points()
        self.flow.log_prob(self.points[:1000], backend=self.backend)
        self.flow.sample(1000, rng=0, backend=self.backend)

    def _measure_W6(self):
        n = len(self.points)
        return {"log_prob": timed(lambda: self.flow.log_prob(self.points, backend=self.backend)),
                "sample": timed(lambda: self.flow.sample(n, rng=0, backend=self.backend))}
