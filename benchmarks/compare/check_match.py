"""Check that torch_flows.py computes what nflow_np's flows compute, so the timings compare like with like.

    python benchmarks/compare/check_match.py

Copies the (perturbed) weights of nflow_np's RealNVP and MAF into the
PyTorch models and compares log_prob, the sampling map and the gradient of
the mean NLL, in float64. Prints one line per model; exits non-zero on a mismatch.
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import workloads  # noqa: E402,F401  (puts the working tree's nflow_np first on sys.path)
import torch_flows  # noqa: E402
from nflow_np import flows  # noqa: E402
from nflow_np.train import value_and_grad  # noqa: E402

torch.set_default_dtype(torch.float64)


def _transformers(flow):
    """nflow_np's trainable layers in sampling order (its Chain lists the last-applied first)."""
    return [b for b in reversed(flow.bijector.bijectors) if hasattr(b, "net")]


def _copy(np_layers, torch_layers):
    """Copy weights; return (nflow_np name prefix, torch parameter) pairs for the gradient check."""
    pairs = []
    for b, t in zip(np_layers, torch_layers):
        linears = [m for m in t.net if isinstance(m, torch.nn.Linear)]
        for k, lin in enumerate(linears):
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(b.net.params[f"w{k}"].T.copy()))
                lin.bias.copy_(torch.from_numpy(b.net.params[f"b{k}"]))
            pairs.append((b.net.params[f"w{k}"], lin.weight, True))
            pairs.append((b.net.params[f"b{k}"], lin.bias, False))
    return pairs


def _rel(a, b):
    """Largest difference relative to the size of the values (float64 rounding is ~1e-16 of them)."""
    return float(np.abs(a - b).max() / (1.0 + np.abs(a).max()))


def check(name, np_flow, torch_flow, dim):
    rng = np.random.default_rng(0)
    for _, v in np_flow.parameters():
        v += 0.1 * rng.standard_normal(v.shape)
    pairs = _copy(_transformers(np_flow), torch_flow.layers)
    x = rng.standard_normal((64, dim))
    xt = torch.from_numpy(x)
    lp_np = np_flow.log_prob(x)
    lp_t = torch_flow.log_prob(xt)
    z = rng.standard_normal((16, dim))
    y_np = np_flow.bijector.forward(z)
    with torch.no_grad():
        zt = torch.from_numpy(z)
        for i, layer in enumerate(torch_flow.layers):
            if i and isinstance(torch_flow, torch_flows.MAF):
                zt = zt.flip(1)
            zt = layer(zt)
    (-lp_t.mean()).backward()
    _, grads = value_and_grad(np_flow, x)
    by_array = {id(v): grads[k] for k, v in np_flow.parameters()}
    grad_err = 0.0
    for array, param, transpose in pairs:
        g = by_array[id(array)]
        grad_err = max(grad_err, _rel((g.T if transpose else g), param.grad.numpy()))
    errs = (_rel(lp_np, lp_t.detach().numpy()), _rel(y_np, zt.numpy()), grad_err)
    ok = max(errs) < 1e-10
    print(f"{name:8s} relative difference: log_prob {errs[0]:.1e}, sampling map {errs[1]:.1e}, "
          f"NLL gradient {errs[2]:.1e}  {'ok' if ok else 'MISMATCH'}")
    return ok


def main():
    ok = check("RealNVP", flows.RealNVP(5, n_layers=4, hidden=(8, 8), rng=0),
               torch_flows.RealNVP(5, 4, (8, 8)), 5)
    ok &= check("MAF", flows.MAF(4, n_layers=3, hidden=(16, 16), rng=0), torch_flows.MAF(4, 3, (16, 16)), 4)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
