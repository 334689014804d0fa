"""Quality tracked like speed: held-out KL (nats) of a few small, fast fits, so a commit that hurts learning shows.

Each ``track_`` value is ``mean(log p - log q)`` on fresh test points, p the data's exact density and q the
trained flow (lower is better; 0 is perfect), under the quality suite's protocol (``benchmarks/quality.py``:
standardized float32 data, Adam, best validation epoch) at budgets of seconds. ``track_w1_gap`` is seed 001's
job: its held-out NLL minus the bimodal mixture's entropy.
"""

from ._common import workloads as wl

import qualitysuite.data as qdata                      # noqa: E402  (benchmarks/ is on sys.path via _common)
from qualitysuite.models import Budget               # noqa: E402
from qualitysuite.protocol import run_cell           # noqa: E402

_SMALL = Budget(layers=4, hidden=(32, 32), epochs=10, batch=256, lr=1e-3, seed=0)
_SIZES = {"small": (5_000, 1_000, 5_000)}


def _kl(name, model, budget=_SMALL):
    qdata.SIZES.update(_SIZES)
    return run_cell(qdata.load(name, "small", seed=0), model, "nflow_np", budget)["kl"]


class HeldOutKL:
    """KL(data || flow) after a short fit, nats per point, for one (data set, model) case."""

    params = [["two-moons/RealNVP", "two-moons/NSF", "8gaussians/MAF", "teacher-4/NSF-AR", "mixture-8/RealNVP"]]
    param_names = ["case"]
    unit = "nats"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, case):
        wl.require_backend("numba")

    def track_kl(self, case):
        name, model = case.split("/")
        return _kl(name, model)


class Seed001Gap:
    """Seed 001's whole job (W1, float32, numba): held-out NLL minus the entropy (PyTorch's own: 0.038)."""

    unit = "nats"
    timeout = 600
    number = 1
    repeat = 1

    def setup(self):
        wl.require_backend("numba")

    def track_w1_gap(self):
        train, test = wl.w1_data()
        flow = wl.w1_flow()
        wl.w1_job(flow, train, "numba")
        return -float(flow.log_prob(test).mean()) - wl.w1_entropy()
