"""The benchmark workloads W1-W7, shared by the asv suite (``suites/``) and ``compare/``.

One place holds each workload's shape (flow, width, batch) and the nflow_np
side of it, so that the asv numbers and the side-by-side comparison time the
same thing. Peers (PyTorch, zuko) read the same ``SPECS`` and build their own
models in ``compare/``.

Nothing here falls back quietly: a workload that asks for a backend the
installed nflow_np does not have raises ``RuntimeError`` naming what is missing.
"""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Which nflow_np is timed. asv tells its benchmark processes what kind of environment they run in
# (ASV_ENV_TYPE). In an environment asv built for one commit ("virtualenv": `asv run A..B`,
# `asv continuous A B`), the benchmarks time the copy of nflow_np asv installed there, so the working
# tree must stay off sys.path. Everywhere else (scripts run from a checkout, compare/, and asv with
# --python=same, whose environment type is "existing") the working tree goes first on sys.path: those
# time the code that is in front of the reader, not whatever copy the Python has installed.
USE_WORKING_TREE = os.environ.get("ASV_ENV_TYPE", "existing") == "existing"
if USE_WORKING_TREE and ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def child_path_code():
    """Python source that makes a fresh child process import the same nflow_np as this process
    (the working tree first on sys.path, or nothing when the installed copy is the one timed)."""
    return f"import sys; sys.path.insert(0, {ROOT!r})" if USE_WORKING_TREE else "import sys"

DTYPE = np.float32
BACKENDS = ("numpy", "numba")
# workloads that time a training step and nothing else
STEP_ONLY = ("W2", "W3", "W7")
# workloads whose step is also timed in a user's own loop (value_and_grad + Adam.step: own_loop_call), next to fit
OWN_LOOP = ("W2",)

# A timed fit() call covers STEPS_PER_CALL optimizer steps, so fit's per-call work
# (validation of the data, optimizer creation, best-state snapshot) is amortized;
# a per-step time is the call's time divided by this.
STEPS_PER_CALL = 20

# Seed 001 (tests/test_seeds.py::test_seed001_realnvp_finds_both_modes): 2-D RealNVP, 4 couplings,
# hidden (8, 8), ReLU, Adam lr 1e-3, batch 64, 100 epochs over 2000 points of the bimodal mixture.
SPECS = {
    "W1": dict(flow="RealNVP", dim=2, n_layers=4, hidden=(8, 8), batch=64, epochs=100, n_train=2000,
               n_test=20000),
    "W2": dict(flow="RealNVP", dim=8, n_layers=8, hidden=(64, 64), batch=256),
    "W3": dict(flow="RealNVP", dim=64, n_layers=5, hidden=(256, 256), batch=1024),
    # MAF's training batch is not part of the brief's definition; 256 matches W2.
    "W4": dict(flow="MAF", dim=8, n_layers=5, hidden=(64, 64), batch=256, n_sample=10_000),
    # W6 uses seed 001's flow (2-D RealNVP, 4 couplings, hidden (8, 8)) on a million points.
    "W6": dict(flow="RealNVP", dim=2, n_layers=4, hidden=(8, 8), n_points=1_000_000),
    # W7: a neural spline flow's training step, spline couplings with 8 bins on [-5, 5].
    "W7": dict(flow="NSF", dim=8, n_layers=5, hidden=(64, 64), bins=8, bound=5.0, batch=256),
}
# every workload, in the order the comparison runs them
WORKLOADS = tuple(SPECS)


# ---------------------------------------------------------------------------
# data: the same arrays for every implementation (peers convert them to tensors)

def w1_data():
    """Training points and the held-out set of W1 (seed 001's bimodal mixture), float32."""
    from nflow_np import datasets
    spec = SPECS["W1"]
    return (datasets.bimodal(spec["n_train"], rng=0, dtype=DTYPE),
            datasets.bimodal(spec["n_test"], rng=3, dtype=DTYPE))


def w1_entropy():
    """The bimodal mixture's entropy: the NLL a perfect model would reach on W1's held-out set."""
    from nflow_np import datasets
    return float(datasets.true_entropy("bimodal"))


def step_data(name, steps=STEPS_PER_CALL):
    """``steps * batch`` correlated Gaussian points for a training-step workload.

    Correlated rather than white so the couplings have something to learn and
    the log-scales move off zero (a zero-initialized flow on white noise would
    keep its exp() calls at exp(0), which is not the steady state being timed).
    """
    spec = SPECS[name]
    rng = np.random.default_rng(10)
    d = spec["dim"]
    mix = np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((steps * spec["batch"], d)) @ mix + 0.1 * np.arange(d)
    return x.astype(DTYPE)


def w6_points():
    """W6's million evaluation points (bimodal mixture, float32)."""
    from nflow_np import datasets
    return datasets.bimodal(SPECS["W6"]["n_points"], rng=5, dtype=DTYPE)


# ---------------------------------------------------------------------------
# nflow_np side

def require_backend(backend):
    """Fail loudly when nflow_np has no backend switch, or not this backend."""
    import nflow_np
    missing = [n for n in ("set_backend", "get_backend", "backend") if not hasattr(nflow_np, n)]
    if missing:
        raise RuntimeError(f"nflow_np has no backend switch yet (missing nflow_np.{', nflow_np.'.join(missing)}); "
                           f"benchmarks for backend={backend!r} need it")
    if backend not in BACKENDS:
        raise RuntimeError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    # Selecting it is the check: an unknown or unavailable backend must raise here, not later.
    with nflow_np.backend(backend):
        pass


def build_flow(name, rng=0):
    """The nflow_np flow of workload ``name``, float32."""
    from nflow_np import flows
    spec = SPECS[name]
    if spec["flow"] == "MAF":
        return flows.MAF(spec["dim"], n_layers=spec["n_layers"], hidden=spec["hidden"], rng=rng, dtype=DTYPE)
    if spec["flow"] == "NSF":
        return flows.NSF(spec["dim"], n_layers=spec["n_layers"], bins=spec["bins"], bound=spec["bound"],
                         hidden=spec["hidden"], rng=rng, dtype=DTYPE)
    return flows.RealNVP(spec["dim"], n_layers=spec["n_layers"], hidden=spec["hidden"], activation="relu",
                         rng=rng, dtype=DTYPE)


def perturb(flow, scale=0.1, seed=7):
    """Move every parameter off its initial value, in place: a stand-in for training before timing
    density or sampling (the couplings start as the identity, whose exp() calls all see 0)."""
    rng = np.random.default_rng(seed)
    for _, value in flow.parameters():
        value += (scale * rng.standard_normal(value.shape)).astype(value.dtype)


def fit_call(flow, data, batch, backend):
    """One timed unit: ``len(data) / batch`` Adam steps through the public ``fit``."""
    from nflow_np.train import fit
    return fit(flow, data, epochs=1, batch_size=batch, lr=1e-3, rng=0, backend=backend)


def own_loop_call(flow, data, batch, backend, rng=0):
    """The same ``len(data) / batch`` Adam steps as :func:`fit_call`, in the loop a user writes around the public
    API (docs/conventions.rst): a new ``Adam`` per call (as ``fit`` makes one), a shuffled pass over ``data``,
    and per batch ``value_and_grad`` then ``Adam.step``. Its time next to ``fit_call``'s is what the Python
    between the compiled calls costs."""
    from nflow_np.train import Adam, value_and_grad
    opt = Adam(flow.parameters(), lr=1e-3)
    order = np.random.default_rng(rng).permutation(len(data))
    for start in range(0, len(data), batch):
        _, grads = value_and_grad(flow, data[order[start:start + batch]], backend=backend)
        opt.step(grads)


def w1_flow():
    """Seed 001's untrained flow (its seed: rng=1)."""
    from nflow_np import flows
    spec = SPECS["W1"]
    return flows.RealNVP(2, n_layers=spec["n_layers"], hidden=spec["hidden"], activation="relu", rng=1,
                         dtype=DTYPE)


def w1_job(flow, train, backend, epochs=None):
    """Seed 001's whole training job on ``flow`` (no validation split, shuffling seed 2, as the seed test)."""
    from nflow_np.train import fit
    spec = SPECS["W1"]
    return fit(flow, train, epochs=spec["epochs"] if epochs is None else epochs, batch_size=spec["batch"],
               lr=1e-3, rng=2, backend=backend)


# ---------------------------------------------------------------------------
# cold start: the first fit, log_prob and sample in a fresh process with an empty NUMBA_CACHE_DIR
# (benchmarks/cold_start.py times each phase; suites/startup.py's ColdStart tracks their sum)

# the targets for the sum fit + log_prob + sample, seconds, on 2 cores
COLD_START_TARGETS = {"RealNVP": 10.0, "NSF": 15.0}

# imports, data and the untrained flow: not part of the timed sum (numba itself is imported by the
# first compiled call, so its import lands in the first fit)
COLD_START_SETUP = """
import numpy as np
from nflow_np import datasets, flows
from nflow_np.train import fit
x = datasets.two_moons(2000, rng=0).astype(np.float32)
flow = flows.{flow}(2, n_layers=4, hidden=(32, 32), rng=0, dtype=np.float32)
"""

# the timed phases, in order, each the first call of its kind in the process
COLD_START_PHASES = (
    ("fit", "fit(flow, x, epochs=2, batch_size=256, rng=0)"),
    ("log_prob", "flow.log_prob(x)"),
    ("sample", "flow.sample(1000, rng=1)"),
)


def cold_start_setup(flow):
    """The setup source of a cold-start run of ``flow`` ("RealNVP" or "NSF"), imports included."""
    if flow not in COLD_START_TARGETS:
        raise ValueError(f"unknown cold-start flow {flow!r}; expected one of {tuple(COLD_START_TARGETS)}")
    return COLD_START_SETUP.format(flow=flow)


# ---------------------------------------------------------------------------
# FLOP floor of a RealNVP training step

def realnvp_step_flops(dim, n_layers, hidden, batch):
    """Matmul FLOPs of one RealNVP training step (forward + backward), ignoring elementwise work.

    Each coupling conditions on ``a = ceil(dim/2)`` coordinates (the mask keeps
    the even indices for parity 0, the odd ones for parity 1) and emits
    ``2 * b`` numbers (shift and log-scale of the other ``b`` coordinates)
    through ``a -> hidden... -> 2b``. A ``(B, m) @ (m, n)`` product costs
    ``2 B m n`` FLOPs; the backward pass does two products of the same size per
    layer (the input gradient ``delta @ W.T`` and the weight gradient
    ``h.T @ delta``), so a step is 3x the forward:

        flops = 3 * 2 * B * sum over couplings of sum_l (w_l * w_{l+1}),
        widths w = (a, *hidden, 2 b)

    (The input gradient of a flow's first coupling is not strictly needed,
    which this floor still counts: a ~1/len(hidden) overcount on one layer in n.)
    """
    total = 0
    for i in range(n_layers):
        a = (dim + 1) // 2 if i % 2 == 0 else dim // 2
        b = dim - a
        widths = (a,) + tuple(hidden) + (2 * b,)
        total += sum(m * n for m, n in zip(widths[:-1], widths[1:]))
    return 3 * 2 * batch * total


def step_flops(name):
    spec = SPECS[name]
    return realnvp_step_flops(spec["dim"], spec["n_layers"], spec["hidden"], spec["batch"])
