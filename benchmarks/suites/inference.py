"""Density evaluation and sampling, float32: W4 (MAF sampling, D sequential passes) and W6 (a million 2-D points).

Flows are trained for nothing: the couplings start at the identity (zero last
layer), so the weights are perturbed in ``setup`` to give the exp/tanh calls
the values a trained flow would feed them.
"""

from ._common import workloads as wl


class W4MAFSample:
    """Draw 10,000 points from a D=8 MAF (5 layers, hidden (64, 64)): sequential in the 8 features."""

    params = list(wl.BACKENDS)
    param_names = ["backend"]
    warmup_time = 0.0
    timeout = 300

    def setup(self, backend):
        wl.require_backend(backend)
        self.flow = wl.build_flow("W4")
        wl.perturb(self.flow)
        self.n = wl.SPECS["W4"]["n_sample"]
        self.flow.sample(self.n, rng=0, backend=backend)

    def time_sample(self, backend):
        self.flow.sample(self.n, rng=0, backend=backend)

    def time_sample_and_log_prob(self, backend):
        self.flow.sample_and_log_prob(self.n, rng=0, backend=backend)


class W6Million2D:
    """log_prob and sampling of 1,000,000 2-D points through seed 001's flow (RealNVP, 4 couplings, (8, 8))."""

    params = list(wl.BACKENDS)
    param_names = ["backend"]
    warmup_time = 0.0
    timeout = 300

    def setup(self, backend):
        wl.require_backend(backend)
        self.flow = wl.build_flow("W6")
        wl.perturb(self.flow)
        self.x = wl.w6_points()
        self.n = len(self.x)
        # warm up on a slice: compiles the same specializations at a fraction of the cost
        self.flow.log_prob(self.x[:1000], backend=backend)
        self.flow.sample(1000, rng=0, backend=backend)

    def time_log_prob(self, backend):
        self.flow.log_prob(self.x, backend=backend)

    def time_sample(self, backend):
        self.flow.sample(self.n, rng=0, backend=backend)

    def peakmem_log_prob(self, backend):
        self.flow.log_prob(self.x, backend=backend)

    def peakmem_sample(self, backend):
        self.flow.sample(self.n, rng=0, backend=backend)
