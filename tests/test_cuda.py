"""The CUDA backend: every device kernel against its NumPy reference, then whole flows and ``fit`` on the device.

These tests need a GPU or Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
where every CUDA thread is a Python thread: correct, slow, so sizes are tiny
yet cross every tile edge of the simulator's launch geometry). They carry the
``cuda`` marker and skip without either; the one ``slow`` test runs them in a
simulator subprocess, so a plain CI run exercises them:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -p no:cacheprovider -m cuda tests/test_cuda.py

References are the package's own NumPy passes: :class:`nflow_np.nn.MLP` for the
networks, the bijectors for the per-feature layers and whole flows, and
:class:`nflow_np.train.Adam` under ``fit``'s guard for the optimizer step (see
``kernel_references.py``); no Numba compilation here, which would cost more than
the simulator.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from kernel_references import (activated, activation_derivative, flat, guarded_adam_step, hidden_activations,
                               reference_actnorm, reference_batchnorm, reference_net)
import nflow_np
from nflow_np import bijectors, flows
from nflow_np.kernels import plan, specs, transforms
from nflow_np.kernels import program as prog
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
from nflow_np.kernels import scalar as scalar_ref
from nflow_np.kernels.backend import cuda_available
from nflow_np.kernels.mlp import hidden_size
from nflow_np.kernels.optim import ACCEPTED, REJECTED_DIVERGED, REJECTED_GRADIENT, REJECTED_OVERFLOW
from nflow_np.train import Adam, fit, nll_and_grad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
READY = SIMULATED or cuda_available()
DTYPES = [np.float64, np.float32]

if READY:
    from numba import cuda

    from nflow_np.kernels.cuda import device as device_mod
    from nflow_np.kernels.cuda import elementwise as elementwise_dev
    from nflow_np.kernels.cuda import frames as frames_dev
    from nflow_np.kernels.cuda import mlp as mlp_dev
    from nflow_np.kernels.cuda import normalization as normalization_dev
    from nflow_np.kernels.cuda import optim as optim_dev
    from nflow_np.kernels.cuda import reduce as reduce_dev
    from nflow_np.kernels.cuda import runner as runner_mod
    from nflow_np.kernels.cuda import torus as torus_dev
    if SIMULATED:
        # simulated threads hand the interpreter lock around at every switch interval: switch often
        sys.setswitchinterval(1e-4)



def batchnorm_states(flow):
    """The BatchNorm layers whose running statistics the compiled program carries."""
    return [spec.state for _, spec in plan.program_for(flow).batchnorms]

def cuda_test(fn):
    """Mark a test ``cuda`` and skip it without a GPU or the simulator."""
    return pytest.mark.cuda(pytest.mark.skipif(not READY, reason="needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1")(fn))


def tol(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=3e-4, atol=3e-5)


def close(got, ref, dtype, err_msg=""):
    """Relative agreement, the absolute floor scaled to the array (long sums round to it)."""
    t = tol(dtype)
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"] * scale, err_msg=err_msg)


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a.copy_to_host()


# ---------------------------------------------------------------- products and networks

@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (9, 5, 3), (13, 7, 10)])
def test_products_match_the_networks_arithmetic(dtype, n, k, m):
    rng = np.random.default_rng(n + k + m)
    a = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((k, m)).astype(dtype)
    bias = rng.standard_normal(m).astype(dtype)
    for act in (-1, 2):
        out = dev(np.zeros((n, m), dtype))
        mlp_dev.matmul_bias_act_cuda(dev(a), dev(w), dev(bias), out, act)
        ref = a @ w + bias
        close(host(out), ref if act < 0 else activated(act, ref), dtype, f"nn act {act}")
    delta = rng.standard_normal((n, m)).astype(dtype)
    h = np.tanh(rng.standard_normal((n, k))).astype(dtype)
    for act in (None, 0, 1):
        back = dev(np.zeros((n, k), dtype))
        mlp_dev.backward_product_cuda(dev(delta), dev(w), back, None if act is None else dev(h),
                                      -1 if act is None else act)
        ref = delta @ w.T if act is None else (delta @ w.T) * activation_derivative(act, h)
        close(host(back), ref, dtype, f"nt act {act}")
    # [a, 1].T @ delta: the weight and bias gradients, summed over split row ranges when n is long
    grad = dev(np.zeros((k + 1) * m, dtype))
    mlp_dev.weight_grads_cuda(dev(a), dev(delta), grad)
    close(host(grad), np.concatenate([a.T @ delta, delta.sum(axis=0, keepdims=True)]).ravel(), dtype, "tn")


@cuda_test
def test_products_in_the_gpu_geometry():
    """The GPU's 64 x 64 tiles (16 x 16 threads), run under the simulator too: edges, padding, split sums."""
    rng = np.random.default_rng(5)
    n, k, m = 66, 18, 3
    a, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32)
    bias, delta = rng.standard_normal(m).astype(np.float32), rng.standard_normal((n, m)).astype(np.float32)
    with device_mod.use_geometry(device_mod.GPU):
        out, back, grad = dev(np.zeros((n, m), np.float32)), dev(np.zeros((n, k), np.float32)), dev(np.zeros(
            (k + 1) * m, np.float32))
        mlp_dev.matmul_bias_act_cuda(dev(a), dev(w), dev(bias), out, 0)
        mlp_dev.backward_product_cuda(dev(delta), dev(w), back)
        mlp_dev.weight_grads_cuda(dev(a), dev(delta), grad)
    close(host(out), np.maximum(a @ w + bias, 0), np.float32)
    close(host(back), delta @ w.T, np.float32)
    close(host(grad), np.concatenate([a.T @ delta, delta.sum(axis=0, keepdims=True)]).ravel(), np.float32)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths,n,act", [((3, 5, 4), 1, 0), ((2, 9, 9, 2), 7, 1), ((5, 11, 6), 13, 2), ((3, 4), 5, 0)])
def test_mlp_matches_the_network(dtype, widths, n, act):
    """The network kernels against :class:`nflow_np.nn.MLP` with the same parameters."""
    rng = np.random.default_rng(n)
    net = reference_net(rng, widths, act, dtype)
    off = 2     # entries of theta before the network's: not read, not written
    theta = np.concatenate([rng.standard_normal(off).astype(dtype), flat(net.params)])
    inp = rng.standard_normal((n, widths[0])).astype(dtype)
    d_theta, d_inp = dev(theta), dev(inp)
    d_hid, d_out = dev(np.zeros(n * hidden_size(widths), dtype)), dev(np.zeros((n, widths[-1]), dtype))
    mlp_dev.mlp_forward_cuda(d_theta, off, widths, act, d_inp, d_hid, d_out)
    out, cache = net.forward_with_cache(inp)
    close(host(d_out), out, dtype, "out")
    close(host(d_hid), hidden_activations(net, inp), dtype, "hid")
    gout = rng.standard_normal(out.shape).astype(dtype)
    scratch = n * max(list(widths[1:-1]) + [1])
    d_gin, d_gtheta = dev(np.zeros_like(inp)), dev(np.full_like(theta, 7.0))
    mlp_dev.mlp_backward_cuda(d_theta, off, widths, act, d_inp, d_hid, dev(gout), d_gin, d_gtheta,
                              dev(np.zeros(scratch, dtype)), dev(np.zeros(scratch, dtype)))
    gin, grads = net.backward(cache, gout)
    close(host(d_gin), gin, dtype, "gin")
    gtheta = host(d_gtheta)
    close(gtheta[off:], flat({k: grads[k] for k in net.params}), dtype, "gtheta")
    assert np.all(gtheta[:off] == 7.0)      # the entries before `off` stay untouched


# ---------------------------------------------------------------- reductions

@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (19, 5)])
def test_sums_match_numpy(dtype, n, m):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal((n, m)).astype(dtype), rng.standard_normal((n, m)).astype(dtype)
    c = rng.standard_normal(m).astype(dtype)
    expected = {reduce_dev.SUM: x.sum(0), reduce_dev.PRODUCT: (x * y).sum(0), reduce_dev.SQUARE: (x * x).sum(0),
                reduce_dev.CENTRED_SQUARE: ((x - c) ** 2).sum(0), reduce_dev.CENTRED_PRODUCT: (x * (y - c)).sum(0)}
    for mode, ref in expected.items():
        out = dev(np.full(m, 2.0))
        reduce_dev.column_sums(dev(x), out, mode, y=dev(y), centre=dev(c), scale=0.5, shift=dev(np.array([3.0])),
                               shift_scale=-1.0, accumulate=True)
        close(host(out), 2.0 + 0.5 * ref - 3.0, dtype, f"mode {mode}")
    out = dev(np.zeros(1))
    reduce_dev.vector_sum(dev(x.ravel()), out, reduce_dev.SQUARE, scale=-2.0)
    close(host(out), [-2.0 * (x.astype(np.float64) ** 2).sum()], dtype)


# ---------------------------------------------------------------- per-feature layers, normal, optimizer, draws

@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_matches_the_bijectors(dtype):
    """Permutations, ActNorm and the normal log-density against ``Permute``, ``ActNorm`` and the standard normal."""
    rng = np.random.default_rng(3)
    n, d = 7, 5
    y, g = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((n, d)).astype(dtype)
    idx = rng.permutation(d)
    permute = bijectors.Permute(idx)
    out = dev(np.zeros_like(y))
    elementwise_dev.permute_cuda(dev(y), dev(idx), out)
    close(host(out), permute.forward(y), dtype, "permute")
    elementwise_dev.permute_backward_cuda(dev(g), dev(idx), out)
    close(host(out), permute.forward_vjp(y, g)[0], dtype, "permute backward")
    log_scale, shift = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    actnorm = reference_actnorm(log_scale, shift)
    for name, reference in (("actnorm_inverse", actnorm.inverse_and_log_det),
                            ("actnorm_forward", actnorm.forward_and_log_det)):
        x, ld = reference(y)
        dx, dld = dev(np.zeros_like(y)), dev(np.ones(n, dtype))
        getattr(elementwise_dev, f"{name}_cuda")(dev(log_scale), dev(shift), dev(y), dx, dld)
        close(host(dx), x, dtype, name)
        close(host(dld), 1.0 + ld, dtype, name)      # added to ld
    gld = rng.standard_normal(n).astype(dtype)
    gy, grads = actnorm.inverse_vjp(y, g, gld)
    got = [dev(np.zeros_like(y)), dev(np.full(d, 7.0, dtype)), dev(np.full(d, 7.0, dtype))]
    elementwise_dev.actnorm_inverse_backward_cuda(dev(log_scale), dev(actnorm.inverse(y)), dev(g), dev(gld), *got)
    for a, b, name in zip(got, (gy, grads["log_scale"], grads["shift"]), ("gy", "g_log_scale", "g_shift")):
        close(host(a), b, dtype, name)
    lp = MultivariateNormalDiag(np.zeros(d, dtype), np.ones(d, dtype)).log_prob(y)
    dlp = dev(np.full(n, 0.5, dtype))
    elementwise_dev.normal_log_prob_cuda(dev(y), dlp)
    close(host(dlp), 0.5 + lp, dtype, "normal log-prob")
    order = np.array([4, 0, 6])
    rows = dev(np.zeros((2, d), dtype))
    elementwise_dev.gather_rows_cuda(dev(y), dev(order), 1, rows)
    close(host(rows), y[order[1:]], dtype, "gather rows")


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [True, False])
def test_batchnorm_matches_the_bijector(dtype, batch):
    """BatchNorm's kernels against the bijector: training mode (batch statistics) with ``batch``, else eval mode."""
    rng = np.random.default_rng(4)
    n, d, eps = 6, 3, 1e-4
    y = (rng.standard_normal((n, d)) * 2 + 1).astype(dtype)
    log_gamma, beta = rng.standard_normal(d).astype(dtype) * 0.3, rng.standard_normal(d).astype(dtype)
    stats = np.concatenate([rng.standard_normal(d), np.abs(rng.standard_normal(d)) + 0.5, [0.1]]).astype(dtype)
    bn = reference_batchnorm(log_gamma, beta, stats, eps, batch)
    x, ld = bn.inverse_and_log_det(y)       # moves the running statistics in training mode
    dx, dld, ds = dev(np.zeros_like(y)), dev(np.zeros(n, dtype)), dev(stats)
    normalization_dev.batchnorm_inverse_cuda(dev(log_gamma), dev(beta), ds, eps, batch, dev(y), dx, dld)
    close(host(dx), x, dtype, "inverse")
    close(host(dld), ld, dtype, "log-det")
    close(host(ds), np.concatenate([bn.running_mean, bn.running_var, stats[2 * d:]]), dtype, "running statistics")
    gx, gld = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal(n).astype(dtype)
    gy, grads = reference_batchnorm(log_gamma, beta, stats, eps, batch).inverse_vjp(y, gx, gld)
    got = [dev(np.zeros_like(y)), dev(np.zeros(d, dtype)), dev(np.zeros(d, dtype))]
    normalization_dev.batchnorm_inverse_backward_cuda(dev(log_gamma), dev(stats), eps, batch, dev(y), dev(gx),
                                                      dev(gld), *got)
    for a, b, name in zip(got, (gy, grads["log_gamma"], grads["beta"]), ("gy", "g_log_gamma", "g_beta")):
        close(host(a), b, dtype, name)
    out, ld = reference_batchnorm(log_gamma, beta, stats, eps, batch).forward_and_log_det(y)
    dout, dld = dev(np.zeros_like(y)), dev(np.zeros(n, dtype))
    normalization_dev.batchnorm_forward_cuda(dev(log_gamma), dev(beta), dev(stats), eps, dev(y), dout, dld)
    close(host(dout), out, dtype, "forward")
    close(host(dld), ld, dtype, "forward log-det")


@cuda_test
@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the simulator computes inf * 0 in Python
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "clip-decay", "nan-gradient", "overflow"])
def test_adam_matches_the_guarded_optimizer(dtype, case):
    """One step against ``fit``'s NumPy path (Adam under its guard); the status code, which only the compiled
    steps report, by hand."""
    rng = np.random.default_rng(6)
    p = 9
    theta, grad = rng.standard_normal(p).astype(dtype), rng.standard_normal(p).astype(dtype)
    m, v = (rng.standard_normal(p) * 0.1).astype(dtype), (np.abs(rng.standard_normal(p)) * 0.1).astype(dtype)
    lr = 1e-2
    if case == "nan-gradient":
        grad[2] = np.nan
    if case == "overflow":
        # an update beyond the dtype's range (twice its largest value is not enough: the bias correction and the
        # moments' ratio shrink it back into range, and the step is accepted); inf for float64
        lr = 1e3 * float(np.finfo(dtype).max)
    decay, clip = (0.01, 0.5) if case == "clip-decay" else (0.0, 0.0)
    hyper = np.array([lr, 0.9, 0.999, 1e-8, decay, clip, np.finfo(dtype).max])
    arrays = [theta, grad, m, v, hyper, np.array([3, 1]), np.zeros(1, np.int64)]
    ref_theta, ref_m, ref_v, ref_hyper, ref_state = guarded_adam_step(*arrays[:6])
    got = [dev(a) for a in arrays]
    optim_dev.adam_step_cuda(*got)
    for a, b, name in zip(got, (ref_theta, grad, ref_m, ref_v), ("theta", "grad", "m", "v")):
        close(host(a), b, dtype, name)
    np.testing.assert_array_equal(host(got[4]), ref_hyper, err_msg="hyper")
    np.testing.assert_array_equal(host(got[5]), ref_state, err_msg="state")
    expected = {"plain": ACCEPTED, "clip-decay": ACCEPTED, "nan-gradient": REJECTED_GRADIENT,
                "overflow": REJECTED_OVERFLOW}[case]
    assert list(host(got[6])) == [expected]
    assert (ref_state[1] == 1) == (expected == ACCEPTED)     # rejected steps counted, accepted ones not
    # a non-finite loss: nothing moves, the learning rate halves, the step's loss reads NaN
    got = [dev(a) for a in arrays]
    scalars, losses = dev(np.array([np.inf, 0.0, 0.0])), dev(np.zeros(2))
    optim_dev.guarded_adam_step_cuda(*got[:4], got[4], got[5], got[6], scalars, losses, 1)
    close(host(got[0]), theta, dtype)
    assert host(got[4])[0] == lr / 2 and list(host(got[5])) == [3, 2] and np.isnan(host(losses)[1])


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_draws_match_their_reference(dtype):
    for size in (1, 13):
        out = dev(np.zeros(size, dtype))
        elementwise_dev.philox_normal_cuda(12345, out)
        close(host(out), elementwise_dev.philox_normal_numpy(12345, size, dtype), dtype)
    draws = elementwise_dev.philox_normal_numpy(7, 200_000, dtype)
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1) < 0.01
    assert abs(np.mean(draws ** 4) - 3) < 0.1     # normal tails, not just two moments


# ---------------------------------------------------------------- whole flows on the device

def perturbed(flow, scale=0.3, seed=1):
    """Move a fresh flow off the identity it starts at (zero last layers, unit statistics), in evaluation mode."""
    rng = np.random.default_rng(seed)
    for _, p in flow.parameters():
        p[...] += (rng.standard_normal(p.shape) * scale).astype(p.dtype)
    for b in getattr(flow.bijector, "bijectors", []):
        if hasattr(b, "running_var"):
            b.running_mean[...] = rng.standard_normal(b.running_mean.shape) * scale
            b.running_var[...] = np.exp(rng.standard_normal(b.running_var.shape) * scale)
    nflow_np.train.set_training(flow, False)
    return flow


FLOWS = {
    "RealNVP": lambda dtype: flows.RealNVP(3, n_layers=3, hidden=(5,), rng=0, dtype=dtype),
    "NICE+ActNorm": lambda dtype: flows.NICE(4, n_layers=2, hidden=(3, 3), activation="tanh", rng=0, dtype=dtype),
    "MAF": lambda dtype: flows.MAF(3, n_layers=2, hidden=(6,), activation="elu", rng=0, dtype=dtype),
    "RealNVP+BatchNorm+Permute": lambda dtype: flows.RealNVP(3, n_layers=2, hidden=(4,), batch_norm=True,
                                                             permute="random", rng=0, dtype=dtype),
    # bound 2: the standard-normal test points fall inside and outside the splines
    "NSF": lambda dtype: flows.NSF(3, n_layers=2, bins=4, bound=2.0, hidden=(4,), rng=0, dtype=dtype),
    "NSF-autoregressive": lambda dtype: flows.NSF(3, n_layers=2, bins=3, bound=2.0, hidden=(5,), autoregressive=True,
                                                  rng=0, dtype=dtype),
    # residual conditioners (kernels.residual): two blocks in the couplings, one in the MADE
    "RealNVP-resnet": lambda dtype: flows.RealNVP(3, n_layers=2, hidden=(4, 4), conditioner="resnet", rng=0,
                                                  dtype=dtype),
    "MAF-resnet": lambda dtype: flows.MAF(3, n_layers=2, hidden=(5,), activation="tanh", conditioner="resnet", rng=0,
                                          dtype=dtype),
}


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(FLOWS))
def test_flows_on_the_device_match_numpy(name, dtype, monkeypatch):
    flow = perturbed(FLOWS[name](dtype))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, flow.event_shape[0])).astype(dtype)
    ref = flow.log_prob(x, backend="numpy")       # also initializes ActNorm from these points
    # a tiny workspace budget: the rows go through in chunks
    monkeypatch.setattr(runner_mod, "WORKSPACE_BYTES", 3 * 200 * np.dtype(dtype).itemsize)
    close(flow.log_prob(x, backend="cuda"), ref, dtype, "log_prob")
    program = runner_mod.runner_for(plan.program_for(flow))
    z = rng.standard_normal((5, flow.event_shape[0])).astype(dtype)
    xs, lp = program.sample(z)
    ref_x, ref_ld = flow.bijector.forward_and_log_det(z)
    close(xs, ref_x, dtype, "sample")
    close(lp, flow.log_prob(ref_x, backend="numpy"), dtype, "sample log_prob")
    for training in (False, True):
        nflow_np.train.set_training(flow, training)
        stats = [(b.running_mean.copy(), b.running_var.copy()) for b in batchnorm_states(flow)]
        loss, grads = nll_and_grad(flow, x, backend="cuda")
        moved = [(b.running_mean.copy(), b.running_var.copy()) for b in batchnorm_states(flow)]
        for b, (mean, var) in zip(batchnorm_states(flow), stats):
            b.running_mean[...], b.running_var[...] = mean, var
        ref_loss, ref_grads = nll_and_grad(flow, x, backend="numpy")
        close(loss, ref_loss, dtype, "loss")
        for key in ref_grads:
            close(grads[key], ref_grads[key], dtype, f"gradient {key} (training={training})")
        for b, (mean, var) in zip(batchnorm_states(flow), moved):
            close(mean, b.running_mean, dtype, "running mean")
            close(var, b.running_var, dtype, "running var")
    nflow_np.train.set_training(flow, False)


@cuda_test
def test_public_calls_on_the_device():
    flow = perturbed(flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0, dtype=np.float32))
    x = np.random.default_rng(9).standard_normal((6, 2)).astype(np.float32)
    ref = flow.log_prob(x, backend="numpy")
    previous = nflow_np.set_backend("cuda")
    try:
        close(flow.log_prob(x), ref, np.float32)
        samples, lp = flow.sample_and_log_prob(5, rng=3)
        assert samples.shape == (5, 2) and lp.shape == (5,) and samples.dtype == np.float32
        close(lp, flow.log_prob(samples, backend="numpy"), np.float32)
        # a seed reproduces the device draws
        np.testing.assert_array_equal(flow.sample(5, rng=3), samples)
        assert flow.sample(rng=1).shape == (2,)
        # device arrays in, device arrays out
        out = flow.log_prob(dev(x.reshape(2, 3, 2)))
        assert device_mod.is_device_array(out) and tuple(out.shape) == (2, 3)
        close(host(out).ravel(), ref, np.float32)
    finally:
        nflow_np.set_backend(previous)
    with nflow_np.backend("cuda"):
        assert nflow_np.get_backend() == "cuda"
    with pytest.raises(TypeError, match="device array"):
        flow.log_prob(dev(x), backend="numpy")


@cuda_test
def test_flows_the_kernels_do_not_cover_run_their_numpy_passes():
    flow = perturbed(flows.RealNVP(3, n_layers=2, hidden=(4,), lu_linear=True, rng=0))
    x = np.random.default_rng(10).standard_normal((4, 3))
    assert plan.program_for(flow) is None or runner_mod.runner_for(plan.program_for(flow)) is None
    close(flow.log_prob(x, backend="cuda"), flow.log_prob(x, backend="numpy"), np.float64)


# ---------------------------------------------------------------- the frames, with every transform

def transform_for(name, frame):
    """Each transform, with settings that differ between the frames (soft clamps on and off)."""
    coupling = frame == "coupling"
    return {"affine": lambda: bijectors.AffineTransform(log_scale_clamp=3.0 if coupling else None),
            "affine(rational)": lambda: bijectors.AffineTransform(log_scale_clamp=1.0 if coupling else 2.0,
                                                                  clamp_shape="rational"),
            "affine(tanh)": lambda: bijectors.AffineTransform(log_scale_clamp=1.0, clamp_shape="tanh"),
            "additive": bijectors.AdditiveTransform,
            # bound 1.5: the test points fall inside the spline, outside it and on both ends
            "spline": lambda: bijectors.SplineTransform(bins=3 if coupling else 4, bound=1.5),
            "spline(softplus)": lambda: bijectors.SplineTransform(bins=3 if coupling else 4, bound=1.5,
                                                                  parameterization="softplus"),
            "sinh_arcsinh": lambda: bijectors.SinhArcsinhTransform(log_tail_clamp=2.0 if coupling else None),
            "sigmoidal": lambda: bijectors.SigmoidalTransform(units=3 if coupling else 4),
            # bound 4: the test points lie inside its interval (it has no value outside), 4.0 on its end
            "circular_spline": lambda: bijectors.CircularSplineTransform(bins=3 if coupling else 4, bound=4.0)}[name]()


def frame_flow(frame, name, dtype, d=3):
    """A small flow of one frame and one transform: two couplings with complementary (non-contiguous) masks, or one
    autoregressive layer in a shuffled order."""
    if frame == "coupling":
        mask = np.array([False, True, False])
        layers = [bijectors.Coupling(mask, transform_for(name, frame), (4,), "tanh", rng=0, dtype=dtype),
                  bijectors.Coupling(~mask, transform_for(name, frame), (3,), "relu", rng=1, dtype=dtype)]
    else:
        layers = [bijectors.Autoregressive(d, transform_for(name, frame), (5,), "elu", order=[2, 0, 1], rng=0,
                                           dtype=dtype)]
    base = MultivariateNormalDiag(np.zeros(d, dtype=dtype), np.ones(d, dtype=dtype))
    return perturbed(TransformedDistribution(base, bijectors.Chain(layers)), scale=0.4)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(transforms.MODULES) + ["spline(softplus)", "affine(rational)",
                                                               "affine(tanh)"])
@pytest.mark.parametrize("frame", ["coupling", "autoregressive"])
def test_frames_on_the_device_match_numpy(frame, name, dtype):
    """Every transform in both frames, against the bijectors' NumPy passes: log_prob, sampling, the NLL gradient."""
    flow = frame_flow(frame, name, dtype)
    program = plan.program_for(flow)
    assert program.transforms == [name.split("(")[0]] * len(program.ops)
    runner = runner_mod.runner_for(program)
    assert runner is not None
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 3)).astype(dtype)
    x.ravel()[:3] = [1.5, -1.5, 4.0]     # a spline's ends, and beyond
    close(flow.log_prob(x, backend="cuda"), flow.log_prob(x, backend="numpy"), dtype, "log_prob")
    z = rng.standard_normal((5, 3)).astype(dtype)
    xs, lp = runner.sample(z)
    ref_x, _ = flow.bijector.forward_and_log_det(z)
    close(xs, ref_x, dtype, "sample")
    close(lp, flow.log_prob(ref_x, backend="numpy"), dtype, "sample log_prob")
    loss, grads = nll_and_grad(flow, x, backend="cuda")
    ref_loss, ref_grads = nll_and_grad(flow, x, backend="numpy")
    close(loss, ref_loss, dtype, "loss")
    assert set(grads) == set(ref_grads)
    for key in ref_grads:
        close(grads[key], ref_grads[key], dtype, f"gradient {key}")


@cuda_test
def test_transforms_become_device_functions_with_their_callees():
    """A transform's device function calls the device versions of the kernels' functions it calls; the sources'
    modules keep theirs."""
    affine = transforms.module_for("affine")
    density = device_mod.device_version(affine.density)
    assert device_mod.device_version(affine.density) is density        # built once
    compiled = getattr(density, "py_func", None) or density.fn         # the GPU's dispatcher, or the simulator's
    assert compiled.__globals__["_log_scale"] is device_mod.device_version(affine._log_scale)
    source = getattr(affine.density, "py_func", affine.density)
    assert source.__globals__["_log_scale"] is affine._log_scale         # the CPU's namespace is left alone
    sinh = transforms.module_for("sinh_arcsinh")
    compiled = getattr(device_mod.device_version(sinh.density), "py_func", None) or \
        device_mod.device_version(sinh.density).fn
    assert compiled.__globals__["soft_clamp"] is device_mod.device_version(scalar_ref.soft_clamp)
    spline = transforms.module_for("spline")
    located = (getattr(device_mod.device_version(spline.density), "py_func", None)
               or device_mod.device_version(spline.density).fn)
    assert located.__globals__["_locate"] is device_mod.device_version(spline._locate)
    # settings: the constants rounded to the dtype, then the transform's own settings
    st = frames_dev.transform_settings("spline", spline.constants(specs.SplineSpec(3, 1.5, 1e-3, 1e-3, 1e-3)),
                                       np.float32)
    assert all(type(v) is np.float32 for i, v in enumerate(st) if i != 12) and st[12] == 3     # K, an int


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_vmath_functions_become_the_devices_own(dtype):
    """vmath's CPU-only polynomials (bit tricks on the exponent) become the GPU's math.exp, math.tanh, math.log and
    math.log1p, in the working dtype."""
    from nflow_np.kernels import vmath
    names = ("exp_", "tanh_", "log_", "log1p_")
    refs = (np.exp, np.tanh, np.log, np.log1p)
    fns = [device_mod.device_version(getattr(vmath, name)) for name in names]
    for name, fn in zip(names, fns):
        source = getattr(fn, "py_func", None) or fn.fn
        assert source.__code__ is getattr(vmath, "_" + name.rstrip("_") + "_device").__code__, name
    exp_d, tanh_d, log_d, log1p_d = fns

    @cuda.jit
    def apply(x, out):
        i = cuda.grid(1)
        if i < x.size:
            out[0, i] = exp_d(x[i])
            out[1, i] = tanh_d(x[i])
            out[2, i] = log_d(x[i] + x[i] * x[i] + 1)      # positive arguments: math.log raises on 0 in Python
            out[3, i] = log1p_d(x[i] * x[i])

    x = np.linspace(-3, 3, 37).astype(dtype)
    out = cuda.to_device(np.zeros((4, x.size), dtype=dtype))
    apply[1, 64](cuda.to_device(x), out)
    got = out.copy_to_host()
    args = (x, x, x + x * x + 1, x * x)
    for row, (ref, arg) in enumerate(zip(refs, args)):
        close(got[row], ref(arg.astype(np.float64)).astype(dtype), dtype, names[row])


# ---------------------------------------------------------------- training

def two_moons(n, dtype):
    rng = np.random.default_rng(11)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    pts = np.stack([np.cos(t) - 0.5 * ~upper, np.where(upper, np.sin(t), -np.sin(t) + 0.4)], axis=1)
    return (pts + 0.05 * rng.standard_normal((n, 2))).astype(dtype)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_on_the_device_matches_numpy(dtype):
    data = two_moons(60, dtype)
    histories, nll = [], []
    for backend in ("numpy", "cuda"):
        flow = flows.RealNVP(2, n_layers=2, hidden=(6,), rng=0, dtype=dtype)
        histories.append(fit(flow, data, epochs=4, batch_size=16, lr=5e-3, validation_data=data[:12], rng=0,
                             backend=backend))
        nll.append(-float(np.mean(flow.log_prob(data, backend="numpy"))))
    ref, got = histories
    rtol = 1e-7 if dtype == np.float64 else 1e-3      # float32 noise, carried through 16 Adam steps
    np.testing.assert_allclose(got.train_loss, ref.train_loss, rtol=rtol)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, rtol=rtol)
    np.testing.assert_allclose(nll[1], nll[0], rtol=rtol)
    assert (got.steps, got.rejected_steps, got.best_epoch) == (ref.steps, ref.rejected_steps, ref.best_epoch)
    assert got.lr == ref.lr
    assert got.averaged == ref.averaged and len(ref.averaged) == 4     # fit's default moving average


@cuda_test
def test_the_moving_average_on_the_device_is_the_cpus_through_divergences():
    """average=0.7 with a learning rate that blows up: the device moves its average after accepted steps and starts
    it again after a step the divergence rule undid, as the NumPy path does; the state kept is the same."""
    data = two_moons(60, np.float64)
    data = (data - data.mean(0)) / data.std(0)
    runs = []
    for backend in ("numpy", "cuda"):
        flow = flows.MAF(2, n_layers=2, hidden=(4,), rng=0)
        history = fit(flow, data, epochs=4, batch_size=10, lr=1e3, validation_data=data[:20], rng=0,
                      backend=backend, average=0.7)
        runs.append((history, dict(flow.parameters())))
    (ref, ref_params), (got, got_params) = runs
    assert ref.diverged_steps > 0 and any(ref.averaged)
    assert got.averaged == ref.averaged
    assert (got.steps, got.rejected_steps, got.diverged_steps, got.best_epoch) == \
        (ref.steps, ref.rejected_steps, ref.diverged_steps, ref.best_epoch)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, rtol=1e-7)
    for k in ref_params:
        close(got_params[k], ref_params[k], np.float64, k)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("autoregressive", [False, True])
def test_nsf_fit_and_draws_on_the_device_match_numpy(autoregressive, dtype):
    data = two_moons(32, dtype)
    make = lambda: flows.NSF(2, n_layers=2, bins=3, bound=2.0, hidden=(4,), autoregressive=autoregressive,  # noqa
                             rng=0, dtype=dtype)
    assert runner_mod.runner_for(plan.program_for(make())) is not None
    histories, flows_fit = [], []
    for backend in ("numpy", "cuda"):
        flow = make()
        histories.append(fit(flow, data, epochs=2, batch_size=16, lr=1e-2, rng=0, backend=backend))
        flows_fit.append(flow)
    ref, got = histories
    rtol = 1e-7 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(got.train_loss, ref.train_loss, rtol=rtol)
    assert (got.steps, got.rejected_steps) == (ref.steps, ref.rejected_steps)
    for (_, p), (_, q) in zip(flows_fit[1].parameters(), flows_fit[0].parameters()):
        close(p, q, dtype, "fitted parameters")
    # the trained flow's device draws: their log-densities are the NumPy passes'
    samples, lp = flows_fit[1].sample_and_log_prob(4, rng=3, backend="cuda")
    close(lp, flows_fit[1].log_prob(samples, backend="numpy"), dtype, "sample_and_log_prob")


def ncsf(autoregressive, dtype, rotate=False):
    flow = flows.NCSF(3, n_layers=2, bins=3, hidden=(4,), autoregressive=autoregressive, rotate=rotate, rng=0,
                      dtype=dtype)
    return perturbed(flow)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("autoregressive,rotate", [(False, False), (True, False), (True, True)])
def test_ncsf_over_its_uniform_base_on_the_device_matches_numpy(autoregressive, rotate, dtype):
    """The uniform box base (and the rotations) on the device: log_prob at the torus's edges, sampling from given
    base points, the NLL gradient, against the NumPy passes."""
    flow = ncsf(autoregressive, dtype, rotate)
    runner = runner_mod.runner_for(plan.program_for(flow))
    assert runner is not None and runner.base is not None
    assert sum(layer.op == prog.OP_CIRCULAR_SHIFT for layer in runner.layers) == int(rotate)
    rng = np.random.default_rng(13)
    x = rng.uniform(-np.pi, np.pi, (6, 3)).astype(dtype)
    bound = dtype(np.pi)
    x[0], x[1] = bound, [-bound, bound, np.nextafter(bound, dtype(0))]
    ref = flow.log_prob(x, backend="numpy")
    assert np.all(np.isfinite(ref))
    close(flow.log_prob(x, backend="cuda"), ref, dtype, "log_prob")
    z = flow.distribution.sample(5, rng=1)
    z[0] = -bound
    xs, lp = runner.sample(z)
    ref_x, _ = flow.bijector.forward_and_log_det(z)
    close(xs, ref_x, dtype, "sample")
    close(lp, flow.log_prob(ref_x, backend="numpy"), dtype, "sample log_prob")
    loss, grads = nll_and_grad(flow, x, backend="cuda")
    ref_loss, ref_grads = nll_and_grad(flow, x, backend="numpy")
    close(loss, ref_loss, dtype, "loss")
    for key in ref_grads:
        close(grads[key], ref_grads[key], dtype, f"gradient {key}")


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_circular_shifts_on_the_device_match_numpy(dtype):
    """One angle for all coordinates and one per coordinate: both directions and the shifts' gradients."""
    from nflow_np.distributions import Uniform
    box = Uniform(np.full(3, -2.0, dtype), np.full(3, 2.0, dtype))
    layers = [bijectors.CircularShift(np.array(0.7, dtype), bound=2.0), bijectors.Reverse(),
              bijectors.CircularShift(np.array([1.9, -0.4, 3.5], dtype), bound=2.0)]
    flow = TransformedDistribution(box, bijectors.Chain(layers))
    runner = runner_mod.runner_for(plan.program_for(flow))
    assert runner is not None
    x = np.random.default_rng(2).uniform(-2.0, 2.0, (7, 3)).astype(dtype)
    x[0] = [2.0, -2.0, 0.0]
    close(flow.log_prob(x, backend="cuda"), flow.log_prob(x, backend="numpy"), dtype, "log_prob")
    xs, _ = runner.sample(x)
    close(xs, flow.bijector.forward(x), dtype, "sample")
    # a density that depends on the shifts: the uniform base restricted to a smaller box does not, so weight the
    # base point through the gradient seed directly
    gz = np.random.default_rng(3).standard_normal(x.shape).astype(dtype)
    ref_gx, ref_grads = flow.bijector.inverse_vjp(x, gz)
    v = runner.keeping_workspace(7).views(7)
    v.z[0].copy_to_device(x)
    runner._upload()
    from nflow_np.kernels.cuda.flow import density_backward, density_pass
    density_pass(runner.layers, runner.theta, v, v.z[0], v.ld, runner.work)
    v.g[0].copy_to_device(gz)
    v.gld.copy_to_device(np.zeros(7, dtype))
    density_backward(runner.layers, runner.theta, runner.gtheta, v, runner.work)
    grads = runner.gradients(runner.gtheta.copy_to_host())
    close(host(v.g[len(layers) % 2]), ref_gx, dtype, "input gradient")
    for key in ref_grads:
        close(grads["bijector." + key], ref_grads[key], dtype, key)


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_base_draws_on_the_device_match_their_reference(dtype):
    low, high = np.array([-1.0, 0.0, 2.0], dtype), np.array([1.5, 3.0, 2.5], dtype)
    base = dev(np.concatenate([[0.0], low, high, high - low, np.ones(3)]).astype(dtype))
    for n in (1, 5):
        out = dev(np.zeros((n, 3), dtype))
        torus_dev.philox_uniform_cuda(99, out, base)
        u = torus_dev.philox_uniform_numpy(99, 3 * n, dtype).reshape(n, 3)
        np.testing.assert_array_equal(host(out), np.minimum(low + (high - low) * u, high))
    u = torus_dev.philox_uniform_numpy(7, 200_000, dtype)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    # a flow's device draws: on the torus, their log-densities the NumPy passes', reproducible for a seed
    flow = ncsf(True, dtype)
    samples, lp = flow.sample_and_log_prob(6, rng=3, backend="cuda")
    assert np.all(np.abs(samples) <= dtype(np.pi))
    close(lp, flow.log_prob(samples, backend="numpy"), dtype, "sample_and_log_prob")
    np.testing.assert_array_equal(flow.sample(6, rng=3, backend="cuda"), samples)


@cuda_test
def test_an_ncsf_fit_on_the_device_matches_numpy():
    data = np.random.default_rng(4).uniform(-np.pi, np.pi, (32, 3))
    histories = []
    for backend in ("numpy", "cuda"):
        flow = ncsf(True, np.float64)
        histories.append(fit(flow, data, epochs=1, batch_size=16, lr=1e-2, rng=0, backend=backend))
    ref, got = histories
    np.testing.assert_allclose(got.train_loss, ref.train_loss, rtol=1e-7)
    assert (got.steps, got.rejected_steps) == (ref.steps, ref.rejected_steps) == (2, 0)


@cuda_test
@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the simulator's float32 overflows, in Python
def test_fit_on_the_device_rejects_steps_as_the_cpu_does():
    """A learning rate beyond float32's range: the first updates overflow and are rejected (the step counts, the
    rate halves); once the rate fits, the parameters blow up, and every later non-finite loss is rejected too."""
    data = two_moons(32, np.float32)
    # soft-clamped log-scales: under the simulator an exp overflowing raises (Python's math) where a GPU gives inf
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0, dtype=np.float32)
    optimizer = Adam(dict(flow.parameters()), lr=1e39)
    history = fit(flow, data, epochs=2, batch_size=8, optimizer=optimizer, rng=0, backend="cuda")
    assert history.rejected_steps >= 2 and history.steps + history.rejected_steps == 2 * 4
    assert optimizer.lr == 1e39 * 0.5 ** history.rejected_steps
    assert optimizer.steps >= 2      # the overflowing steps count, as in the reference optimizer
    assert all(np.isfinite(p).all() for _, p in flow.parameters())


@cuda_test
def test_the_divergence_rule_on_the_device_matches_the_reference():
    """A loss far above the level: the whole state goes back to the kept copy, the rate halves, the step's loss
    reads +inf, the level stays; a loss that passes moves the level and is kept with its state."""
    p, size = 3, 5
    theta_all = dev(np.arange(size, dtype=np.float64))
    prev = dev(np.full(size, -1.0))
    grad, m, v = dev(np.ones(p)), dev(np.zeros(p)), dev(np.zeros(p))
    hyper = dev(np.array([1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, np.finfo(np.float64).max]))
    state, status, losses = dev(np.array([4, 0])), dev(np.zeros(1, np.int64)), dev(np.zeros(2))
    watch = dev(np.array([2.0, 0.5, 3.0, 0.0]))
    diverged = 2.0 + scalar_ref.DIVERGENCE_FACTOR * (2.0 + 0.5 + 1.0) * 1.01
    optim_dev.guarded_adam_step_cuda(theta_all[:p], grad, m, v, hyper, state, status, dev(np.array([diverged, 0, 0])),
                                     losses, 0, watch=watch, full=theta_all, prev=prev)
    assert list(host(theta_all)) == [-1.0] * size and host(hyper)[0] == 5e-3 and list(host(state)) == [4, 1]
    assert host(losses)[0] == np.inf and host(status)[0] == REJECTED_DIVERGED
    assert list(host(watch)[:3]) == [2.0, 0.5, 3.0] and np.all(host(m) == 0)
    optim_dev.guarded_adam_step_cuda(theta_all[:p], grad, m, v, hyper, state, status, dev(np.array([3.0, 0, 0])),
                                     losses, 1, watch=watch, full=theta_all, prev=prev)
    assert list(host(prev)) == [-1.0] * size and host(losses)[1] == 3.0 and list(host(state)) == [5, 1]
    level = scalar_ref.loss_level(3.0, 2.0, 0.5, 3.0)
    np.testing.assert_allclose(host(watch)[:3], level)
    assert np.all(host(theta_all)[:p] < -1.0) and list(host(theta_all)[p:]) == [-1.0] * (size - p)


@cuda_test
def test_fit_on_the_device_catches_a_divergence_as_the_cpu_does():
    data = two_moons(60, np.float64)
    data = (data - data.mean(0)) / data.std(0)
    runs = []
    for backend in ("numpy", "cuda"):
        flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=4)
        history = fit(flow, data, epochs=2, batch_size=20, lr=1e4, rng=4, backend=backend)
        runs.append((history, dict(flow.parameters())))
    (ref, ref_params), (got, got_params) = runs
    assert ref.diverged_steps > 0
    assert (got.steps, got.rejected_steps, got.diverged_steps, got.best_epoch, got.lr) == \
        (ref.steps, ref.rejected_steps, ref.diverged_steps, ref.best_epoch, ref.lr)
    np.testing.assert_allclose(got.train_loss, ref.train_loss, rtol=1e-7)
    for k in ref_params:
        close(got_params[k], ref_params[k], np.float64, k)


# ---------------------------------------------------------------- without a GPU

@pytest.mark.skipif(READY, reason="a GPU or the simulator is present")
def test_without_a_gpu_the_cuda_backend_says_what_is_missing():
    x = np.zeros((1, 2))
    flow = flows.RealNVP(2, rng=0)
    for call in (lambda: nflow_np.set_backend("cuda"), lambda: flow.log_prob(x, backend="cuda"),
                 lambda: fit(flow, x, epochs=1, backend="cuda")):
        with pytest.raises((RuntimeError, ImportError), match="backend 'cuda'") as info:
            call()
        assert "no CUDA GPU was found" in str(info.value) or "nflow_np[cuda]" in str(info.value)
    assert nflow_np.get_backend() in ("numpy", "numba")
    np.testing.assert_allclose(flow.log_prob(x, backend="numpy"), flow.log_prob(x))


def test_a_missing_numba_cuda_names_the_package_to_install(monkeypatch):
    import importlib

    import numba
    backend_mod = importlib.import_module("nflow_np.kernels.backend")    # the package re-exports backend()
    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    error, reason = backend_mod._probe_cuda()
    assert error is ImportError and "pip install 'nflow_np[cuda]'" in reason and "numba.cuda" in reason


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the CUDA tests ran in this process")
def test_the_cuda_tests_pass_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                             "tests/test_cuda.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
