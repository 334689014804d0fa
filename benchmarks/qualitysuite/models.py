"""The suite's models, nflow_np's and zuko's, at one architecture and one training budget.

Both sides see the same standardized float32 data (the training part's mean
and standard deviation), train with Adam on shuffled mini-batches, validate
once per epoch and keep the best validation epoch. Architectures match layer
for layer: ``layers`` transforms with ``hidden`` ReLU conditioners,
alternating coupling masks (RealNVP, NICE, NSF) or alternating orders (MAF,
NSF-AR), 8-bin splines on [-5, 5] (nflow_np's in the parameterization
``Budget.spline_parameterization``, bounded by default, as the library; the affine flows with the log-scale
clamp ``Budget.clamp_shape``, rational by default, as the library). zuko's side uses its own classes
(``RealNVP``, ``NICE`` with its additive or spline univariate transform,
``MAF``, ``NSF``) with its own initialization and clamps; NICE on both sides
ends with a learned diagonal scaling on the data side.

The neural autoregressive flows: nflow_np's NAF (MADE-conditioned deep
sigmoidal transforms, 16 sigmoids) against zuko's ``NAF`` (a monotonic
network fed a 16-wide signal by the same kind of MADE hyper-network), and
nflow_np's BNAF (``layers`` block networks with ``len(hidden)`` hidden layers of
about ``hidden[0]`` units) against zuko's ``UNAF`` (zuko has no BNAF; its
unconstrained monotonic network is the nearest peer), both of zuko's with
``layers`` transforms and ``hidden`` hyper-networks.
"""

import copy
from dataclasses import dataclass

import numpy as np

MODELS = ["RealNVP", "NICE", "MAF", "NSF", "NSF-AR", "NAF", "BNAF"]
# the same flows with residual conditioners (nflow_np only): conditioner="resnet", hidden=Budget.res_hidden
RESIDUAL = "-res"
RESIDUAL_MODELS = [m + RESIDUAL for m in MODELS if m not in ("NAF", "BNAF")]


@dataclass
class Budget:
    layers: int = 5
    hidden: tuple = (64, 64)
    epochs: int = 20
    batch: int = 512
    lr: float = 1e-3
    seed: int = 0
    res_hidden: tuple = (32, 32)     # (width,) * blocks of the "-res" models' residual conditioners
    spline_parameterization: str = "bounded"      # nflow_np's NSF and NSF-AR
    clamp_shape: str = "rational"                 # nflow_np's RealNVP and MAF: their log-scale clamp


# ---------------------------------------------------------------------------
# nflow_np

def nflow_model(model, dim, budget, **overrides):
    from nflow_np import flows
    common = dict(n_layers=budget.layers, hidden=budget.hidden, rng=budget.seed, dtype=np.float32)
    if model.endswith(RESIDUAL):
        model = model[:-len(RESIDUAL)]
        common.update(hidden=budget.res_hidden, conditioner="resnet")
    common.update(overrides)
    affine = dict(clamp_shape=budget.clamp_shape)
    affine.update(common)
    if model == "RealNVP":
        return flows.RealNVP(dim, **affine)
    if model == "NICE":
        return flows.NICE(dim, **common)
    if model == "MAF":
        return flows.MAF(dim, **affine)
    spline = dict(bins=8, bound=5.0, parameterization=budget.spline_parameterization)
    if model == "NSF":
        return flows.NSF(dim, **spline, **common)
    if model == "NSF-AR":
        return flows.NSF(dim, autoregressive=True, **spline, **common)
    if model == "NAF":
        return flows.NAF(dim, sigmoid_units=16, **common)
    if model == "BNAF":
        common.pop("hidden")
        return flows.BNAF(dim, hidden_factor=max(1, budget.hidden[0] // dim), hidden_layers=len(budget.hidden),
                          **common)
    raise ValueError(model)


def nflow_train(model, train, val, budget, fit_options=None, **overrides):
    """Returns ``(log_prob, history)``: a function of standardized float32 points, and fit's history."""
    from nflow_np.train import fit
    flow = nflow_model(model, train.shape[1], budget, **overrides)
    options = dict(epochs=budget.epochs, batch_size=budget.batch, lr=budget.lr, validation_data=val,
                   rng=budget.seed + 1, backend="numba")
    options.update(fit_options or {})
    history = fit(flow, train, **options)
    history.n_params = int(sum(p.size for _, p in flow.parameters()))
    return (lambda x: flow.log_prob(x, backend="numba").astype(np.float64)), history


# ---------------------------------------------------------------------------
# zuko

def zuko_model(model, dim, budget):
    import torch
    import zuko
    from zuko.transforms import AdditiveTransform, DependentTransform, MonotonicAffineTransform, \
        MonotonicRQSTransform
    torch.manual_seed(budget.seed)
    common = dict(features=dim, transforms=budget.layers, hidden_features=tuple(budget.hidden))
    if model == "RealNVP":
        return zuko.flows.RealNVP(**common)
    if model == "MAF":
        return zuko.flows.MAF(**common)
    if model == "NSF-AR":
        return zuko.flows.NSF(bins=8, **common)
    if model == "NSF":
        # a pure spline coupling flow: zuko's coupling class with its spline as the univariate transform
        return zuko.flows.NICE(univariate=MonotonicRQSTransform, shapes=[(8,), (8,), (7,)], **common)
    if model == "NAF":
        return zuko.flows.NAF(signal=16, **common)
    if model == "BNAF":
        return zuko.flows.UNAF(signal=16, **common)
    if model == "NICE":
        couplings = zuko.flows.NICE(univariate=AdditiveTransform, shapes=[()], **common)
        scaling = zuko.flows.UnconditionalTransform(
            lambda shift, scale: DependentTransform(MonotonicAffineTransform(shift, scale), 1),
            torch.zeros(dim), torch.zeros(dim))
        return zuko.flows.Flow([scaling, *couplings.transform.transforms], couplings.base)
    raise ValueError(model)


def zuko_train(model, train, val, budget):
    import torch
    torch.set_num_threads(1)
    flow = zuko_model(model, train.shape[1], budget)
    opt = torch.optim.Adam(flow.parameters(), lr=budget.lr)
    x = torch.from_numpy(np.ascontiguousarray(train, np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(val, np.float32))
    gen = torch.Generator().manual_seed(budget.seed + 1)
    best, best_state = np.inf, copy.deepcopy(flow.state_dict())
    for _ in range(budget.epochs):
        flow.train()
        for idx in torch.randperm(len(x), generator=gen).split(budget.batch):
            loss = -flow().log_prob(x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        flow.eval()
        with torch.no_grad():
            v = -float(flow().log_prob(xv).mean())
        if np.isfinite(v) and v < best:
            best, best_state = v, copy.deepcopy(flow.state_dict())
    flow.load_state_dict(best_state)

    def log_prob(points):
        with torch.no_grad():
            out = [flow().log_prob(torch.from_numpy(np.ascontiguousarray(points[i:i + 8192], np.float32)))
                   for i in range(0, len(points), 8192)]
        return torch.cat(out).double().numpy()

    return log_prob, None
