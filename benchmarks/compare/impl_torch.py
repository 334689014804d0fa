"""PyTorch's side of the comparison (hand-written flows in torch_flows.py); zuko's runner reuses its loops.

CPU, float32, ``torch.set_num_threads`` from ``NFLOW_COMPARE_THREADS`` (2 by
default, as nflow_np's BLAS and Numba get). A training step is the textbook
loop, ``-log_prob(batch).mean()``, ``backward()``, ``torch.optim.Adam`` with
nflow_np's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8), over a fresh
permutation of the data each epoch, batches taken in order, the last one
partial, as nflow_np's ``fit``.
"""

import os

import torch

import workloads as wl
from timing import MATMUL_SHAPES, matmul_gflops, timed, w1_epochs

torch.set_num_threads(int(os.environ.get("NFLOW_COMPARE_THREADS", "2")))
torch.set_default_dtype(torch.float32)


class TorchMatmul:
    @staticmethod
    def operands(m, k, n):
        g = torch.Generator().manual_seed(0)
        return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)

    def __call__(self, a, b):
        return torch.mm(a, b)


class _Model:
    """What the loops need from a flow: ``log_prob(x)``, ``sample(n)``, ``parameters()``."""

    def __init__(self, module):
        self.module = module

    def log_prob(self, x):
        return self.module.log_prob(x)

    def sample(self, n):
        return self.module.sample(n)

    def parameters(self):
        return self.module.parameters()


def train_epochs(model, data, batch, epochs, generator):
    """Adam over ``epochs`` shuffled passes of ``data``, a new optimizer per call (as a ``fit`` call)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = data.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch):
            loss = -model.log_prob(data[order[i:i + batch]]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def perturb(model, scale=0.1, seed=7):
    """Move parameters off their initialization, as nflow_np's runner does before timing sampling."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


class TorchRunner:
    """Runs a workload on models built by ``build(workload, seed)``; subclasses change only that."""

    def build(self, workload, seed=0):
        import torch_flows
        spec = wl.SPECS[workload]
        if spec["flow"] not in ("MAF", "RealNVP"):
            raise ValueError(f"torch_flows has no {spec['flow']}; {workload} runs on nflow_np and zuko only")
        torch.manual_seed(seed)
        cls = torch_flows.MAF if spec["flow"] == "MAF" else torch_flows.RealNVP
        return _Model(cls(spec["dim"], spec["n_layers"], spec["hidden"]))

    def prepare(self, workload, quick):
        self.quick = quick
        self.generator = torch.Generator().manual_seed(2)
        if workload in wl.STEP_ONLY:
            self._prepare_steps(workload)
        else:
            getattr(self, f"_prepare_{workload}")()

    def measure(self, workload):
        if workload in wl.STEP_ONLY:
            return {"step": self._step()}
        return getattr(self, f"_measure_{workload}")()

    def matmul(self):
        return matmul_gflops(TorchMatmul(), MATMUL_SHAPES)

    # ---- W1
    def _prepare_W1(self):
        train, test = wl.w1_data()
        self.train, self.test = torch.from_numpy(train), torch.from_numpy(test)
        train_epochs(self.build("W1", seed=1), self.train, wl.SPECS["W1"]["batch"], 1, self.generator)

    def _measure_W1(self):
        model = self.build("W1", seed=1)
        generator = torch.Generator().manual_seed(2)
        seconds = timed(lambda: train_epochs(model, self.train, wl.SPECS["W1"]["batch"], w1_epochs(self.quick),
                                             generator))
        self.w1_trained = model
        return {"job": seconds}

    def held_out_nll(self):
        with torch.no_grad():
            return -float(self.w1_trained.log_prob(self.test).mean())

    # ---- training steps: W2, W3, W4 (W7's splines come from ZukoRunner's build)
    def _prepare_steps(self, workload):
        self.batch = wl.SPECS[workload]["batch"]
        self.model = self.build(workload)
        self.data = torch.from_numpy(wl.step_data(workload))
        train_epochs(self.model, self.data, self.batch, 1, self.generator)

    def _step(self):
        seconds = timed(lambda: train_epochs(self.model, self.data, self.batch, 1, self.generator))
        return seconds / wl.STEPS_PER_CALL

    def _prepare_W4(self):
        self._prepare_steps("W4")
        self.sampler = self.build("W4")
        perturb(self.sampler)
        self.n_sample = wl.SPECS["W4"]["n_sample"]
        with torch.no_grad():
            self.sampler.sample(self.n_sample)

    def _measure_W4(self):
        with torch.no_grad():
            sample = timed(lambda: self.sampler.sample(self.n_sample))
        return {"step": self._step(), "sample": sample}

    # ---- W6
    def _prepare_W6(self):
        self.model = self.build("W6")
        perturb(self.model)
        self.points = torch.from_numpy(wl.w6_points())
        with torch.no_grad():
            self.model.log_prob(self.points[:1000])
            self.model.sample(1000)

    def _measure_W6(self):
        n = self.points.shape[0]
        with torch.no_grad():
            return {"log_prob": timed(lambda: self.model.log_prob(self.points)),
                    "sample": timed(lambda: self.model.sample(n))}
