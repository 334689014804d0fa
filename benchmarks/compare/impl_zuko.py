"""zuko's side: its own ``zuko.flows.RealNVP`` and ``zuko.flows.MAF`` with the workloads' sizes, in PyTorch's loops.

These are zuko's models, not copies of nflow_np's: same depth, widths, ReLU
and alternating masks / order reversals, but zuko's default initialization
(no zero last layer) and its own soft clamp of the log-scale
(``a / (1 + |a / log(1e-3)|)``). zuko's transforms map data -> base, so its
sampling runs the inverse: for MAF, ``D`` fixed-point passes per layer, as
nflow_np's D sequential passes.
"""

import torch
import zuko

import workloads as wl
from impl_torch import TorchRunner


class _ZukoModel:
    def __init__(self, flow):
        self.flow = flow

    def log_prob(self, x):
        return self.flow().log_prob(x)

    def sample(self, n):
        return self.flow().sample((n,))

    def parameters(self):
        return self.flow.parameters()


class ZukoRunner(TorchRunner):
    def build(self, workload, seed=0):
        spec = wl.SPECS[workload]
        torch.manual_seed(seed)
        cls = zuko.flows.MAF if spec["flow"] == "MAF" else zuko.flows.RealNVP
        return _ZukoModel(cls(features=spec["dim"], transforms=spec["n_layers"],
                              hidden_features=tuple(spec["hidden"])))
