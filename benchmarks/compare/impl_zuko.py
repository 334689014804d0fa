"""zuko's side: its own ``zuko.flows.RealNVP``, ``MAF`` and ``NSF`` with the workloads' sizes, in PyTorch's loops.

These are zuko's models, not copies of nflow_np's: same depth, widths, ReLU
and alternating masks / order reversals, but zuko's default initialization
(no zero last layer) and its own soft clamp of the log-scale
(``a / (1 + |a / log(1e-3)|)``). zuko's transforms map data -> base, so its
sampling runs the inverse: for MAF, ``D`` fixed-point passes per layer, as
nflow_np's D sequential passes. W7's ``zuko.flows.NSF`` with ``passes=2`` is
zuko's spline coupling flow (two-pass MADE masks), with the same bins and
bound as nflow_np's ``NSF``.
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
        if spec["flow"] == "NSF":
            return _ZukoModel(zuko.flows.NSF(features=spec["dim"], bins=spec["bins"], transforms=spec["n_layers"],
                                             hidden_features=tuple(spec["hidden"]), passes=2))
        cls = zuko.flows.MAF if spec["flow"] == "MAF" else zuko.flows.RealNVP
        return _ZukoModel(cls(features=spec["dim"], transforms=spec["n_layers"],
                              hidden_features=tuple(spec["hidden"])))
