"""The references the compiled kernels are held to, built from the package's own NumPy passes.

The kernels of :mod:`nflow_np.kernels` (Numba) and :mod:`nflow_np.kernels.cuda` keep
no NumPy copies of themselves: their reference is the network, bijector or
optimizer whose work they do. Each helper here sets one of those up from a
kernel's arguments, so that ``tests/test_kernels.py`` and ``tests/test_cuda.py``
compare the kernels' outputs with the reference's.
"""

import numpy as np

from nflow_np.bijectors import ActNorm, BatchNorm
from nflow_np.kernels import mlp
from nflow_np.nn import MLP
from nflow_np.nn.mlp import _activate, _activation_grad
from nflow_np.train import Adam, History
from nflow_np.train._guard import Snapshot, guarded_step

ACTIVATION_NAMES = {code: name for name, code in mlp.ACTIVATION_CODES.items()}


def flat(arrays):
    """A dict of arrays (parameters, gradients, moments) raveled in order: the kernels' flat layout."""
    return np.concatenate([np.ravel(a) for a in arrays.values()])


# ---------------------------------------------------------------- networks

def activated(act, z):
    """The networks' activation with code ``act`` applied to ``z`` (not changed)."""
    return _activate(ACTIVATION_NAMES[act], np.array(z, copy=True))[0]


def activation_derivative(act, h):
    """The activation's derivative, written through its output ``h``, as the networks' backward uses it."""
    return _activation_grad(ACTIVATION_NAMES[act], np.ones_like(h), h, None)


def reference_net(rng, widths, act, dtype, scale=0.7):
    """An :class:`nflow_np.nn.MLP` of ``widths`` with activation code ``act``, random weights and biases.

    Its ``params`` in order are the kernels' flat layout: ``flat(net.params)`` is their ``theta``.
    """
    net = MLP(widths[0], widths[-1], hidden=tuple(widths[1:-1]), activation=ACTIVATION_NAMES[act], rng=0,
              dtype=dtype)
    assert list(net.params) == [f"{kind}{layer}" for layer in range(len(widths) - 1) for kind in "wb"]
    for p in net.params.values():
        p[...] = rng.standard_normal(p.shape) * scale
    return net


def hidden_activations(net, inp):
    """The kernels' ``hid`` buffer for ``inp``: each hidden layer's outputs as one ``(n, width)`` block, in order.

    Layer ``l``'s block is the output of ``net`` cut after that layer, with an identity head.
    """
    blocks = [np.zeros(0, net.dtype)]
    for layer, width in enumerate(net.hidden):
        cut = MLP(net.in_features, width, hidden=net.hidden[:layer + 1], activation=net.activation, rng=0,
                  dtype=net.dtype)
        for k in range(layer + 1):
            cut.params[f"w{k}"][...] = net.params[f"w{k}"]
            cut.params[f"b{k}"][...] = net.params[f"b{k}"]
        cut.params[f"w{layer + 1}"][...] = np.eye(width)
        cut.params[f"b{layer + 1}"][...] = 0.0
        blocks.append(cut.forward(inp).ravel())
    return np.concatenate(blocks)


# ---------------------------------------------------------------- per-feature layers

def reference_actnorm(log_scale, shift):
    """An initialized :class:`nflow_np.bijectors.ActNorm` with these parameters."""
    bijector = ActNorm(log_scale.size, dtype=log_scale.dtype)
    bijector.params["log_scale"][...] = log_scale
    bijector.params["shift"][...] = shift
    bijector.initialized = True
    return bijector


def reference_batchnorm(log_gamma, beta, stats, eps, batch):
    """A :class:`nflow_np.bijectors.BatchNorm` in the state the kernels' arguments describe.

    ``stats`` is ``[running_mean, running_var, momentum]``; ``batch`` (batch statistics in the density pass)
    is training mode, on a batch of two rows or more.
    """
    d = log_gamma.size
    bijector = BatchNorm(d, momentum=float(stats[2 * d]), eps=eps, dtype=log_gamma.dtype).train(batch)
    bijector.params["log_gamma"][...] = log_gamma
    bijector.params["beta"][...] = beta
    bijector.running_mean[...] = stats[:d]
    bijector.running_var[...] = stats[d:2 * d]
    return bijector


# ---------------------------------------------------------------- the optimizer

def guarded_adam_step(theta, grad, m, v, hyper, state):
    """One step of ``fit``'s NumPy path, :class:`nflow_np.train.Adam` under the guard that rejects a step whose
    gradient or update is not finite, in the layout of the compiled step's arguments.

    The arguments are not changed; returns ``(theta, m, v, hyper, state)`` as the step leaves them. ``hyper`` is
    ``[lr, beta1, beta2, eps, weight_decay, clip_norm, largest]`` (``clip_norm <= 0``: none); ``state`` is
    ``[steps, rejected]``, ``steps`` the optimizer's, ``rejected`` the training history's.
    """
    lr, b1, b2, eps, decay, clip, largest = (float(h) for h in hyper)
    param = np.array(theta, copy=True)
    optimizer = Adam([("p", param)], lr=1.0, betas=(b1, b2), eps=eps, weight_decay=decay,
                     clip_norm=clip if clip > 0 else None)
    optimizer.lr, optimizer.steps = lr, int(state[0])      # lr unchecked: a test may pass one beyond the dtype
    optimizer.m["p"][...] = m
    optimizer.v["p"][...] = v
    history = History(rejected_steps=int(state[1]))
    with np.errstate(over="ignore", invalid="ignore"):
        guarded_step(optimizer, 0.0, {"p": grad}, Snapshot({"p": param}), history)
    return (param, optimizer.m["p"].copy(), optimizer.v["p"].copy(),
            np.array([optimizer.lr, b1, b2, eps, decay, clip, largest]),
            np.array([optimizer.steps, history.rejected_steps]))
