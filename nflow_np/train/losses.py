"""Losses of a flow and their exact gradients, by the bijectors' hand-written backward passes."""

import numpy as np

from .._validation import as_float_array, as_generator, check_finite
from ..distributions.transformed import TransformedDistribution
from ..kernels.backend import resolve_backend


def _check_flow(flow, where):
    if not isinstance(flow, TransformedDistribution):
        raise TypeError(f"{where}: flow must be a TransformedDistribution; got {type(flow).__name__}")


def _expand_to(grad, shape):
    """Broadcast a per-event gradient over trailing event axes to ``shape``."""
    return np.broadcast_to(grad.reshape(grad.shape + (1,) * (len(shape) - grad.ndim)), shape)


def _base_grads(flow, z, grad_lp):
    """Gradient reaching z from the base log-density, and the base's own parameter gradients (none yet)."""
    score = flow.distribution._log_prob_grad(z)
    return _expand_to(grad_lp, score.shape) * score


def nll_and_grad(flow, x, backend=None):
    """Mean negative log-likelihood of ``x`` and its gradient for every parameter of ``flow``.

    One inverse (density) pass through the bijector and one backward pass:
    ``loss = -mean(log p(x))``. With ``backend="numba"`` a flow the compiled
    program covers takes both passes in one compiled call.
    """
    where = "value_and_grad"
    x = flow._prepare(x, where)
    program = flow._compiled(backend, where)
    if program is not None and x.ndim >= 1 and x.size:
        loss, gtheta = program.nll_and_grad(x.reshape(-1, flow.event_shape[0]), "numba")
        return loss, program.gradients(gtheta)
    bijector = flow.bijector
    z, log_det, ctx = bijector._inverse_pass(x)
    log_prob = flow._base_log_prob(z) + bijector._reduce(log_det, flow.event_ndims)
    loss = -float(np.mean(log_prob))
    grad_lp = np.full(log_prob.shape, -1.0 / log_prob.size, dtype=log_prob.dtype)
    grad_z = _base_grads(flow, z, grad_lp)
    _, grads = bijector._inverse_backward(ctx, grad_z.astype(z.dtype, copy=False),
                                          _expand_to(grad_lp, log_det.shape))
    return loss, {f"bijector.{k}": v for k, v in grads.items()}


def reverse_kl_and_grad(flow, target_log_prob, n_samples, rng=None, *, target_grad=None, z=None):
    """Reverse KL up to the target's normalizer, ``mean(log q(x) - log p~(x))`` with ``x = forward(z)``.

    ``z`` are base samples (drawn from ``rng`` when not given); gradients flow
    through the reparameterized samples by the bijector's forward VJP.
    ``target_log_prob(x)`` returns one value per event; ``target_grad(x)``
    its gradient in ``x``. Without ``target_grad`` the gradient is taken by
    central finite differences (``2 d`` extra calls of ``target_log_prob``).
    Minus this loss is the evidence lower bound (ELBO) of the target's normalizer.
    """
    where = "reverse_kl"
    bijector = flow.bijector
    if z is None:
        z = flow.distribution.sample(n_samples, as_generator(rng))
    x, log_det, ctx = bijector._forward_pass(z)
    target = np.asarray(target_log_prob(x), dtype=x.dtype)
    batch = x.shape[:x.ndim - flow.event_ndims]
    if target.shape != batch:
        raise ValueError(f"{where}: target_log_prob returned shape {target.shape}; expected one value per "
                         f"sample, shape {batch}")
    check_finite(target, where, "target_log_prob(x)")
    log_q = flow._base_log_prob(z) - bijector._reduce(log_det, flow.event_ndims)
    loss = float(np.mean(log_q - target))
    n = log_q.size
    if target_grad is not None:
        grad_target = as_float_array(target_grad(x), x.dtype, where, "target_grad(x)")
        if grad_target.shape != x.shape:
            raise ValueError(f"{where}: target_grad returned shape {grad_target.shape}; expected {x.shape}")
    else:
        grad_target = _finite_difference_grad(target_log_prob, x, flow.event_ndims)
    grad_x = (-grad_target / n).astype(x.dtype, copy=False)
    # d loss / d forward-log-det = -1/n for every event
    grad_ld = np.full(log_det.shape, -1.0 / n, dtype=x.dtype)
    _, grads = bijector._forward_backward(ctx, grad_x, grad_ld)
    return loss, {f"bijector.{k}": v for k, v in grads.items()}


def _finite_difference_grad(fn, x, event_ndims):
    from .._finite_diff import default_step, input_vjp

    step = default_step(x.dtype) * np.maximum(1.0, np.abs(x))
    grad, _ = input_vjp(lambda p: np.asarray(fn(p), dtype=p.dtype), x, event_ndims, step)
    return grad


def value_and_grad(flow, x=None, loss="nll", backend=None, **kwargs):
    """The mean loss and a dict of gradients keyed by the names of ``flow.parameters()``.

    ``loss="nll"``: mean negative log-likelihood of data ``x``.
    ``loss="reverse_kl"``: see :func:`reverse_kl_and_grad` (pass ``target_log_prob``,
    ``n_samples``, ``rng`` and optionally ``target_grad`` or fixed base samples ``z``).
    ``backend`` (``"numpy"`` or ``"numba"``) applies to the NLL; the reverse KL
    runs the bijectors' NumPy passes.
    """
    _check_flow(flow, "value_and_grad")
    if loss == "nll":
        if x is None:
            raise ValueError("value_and_grad: loss='nll' needs data x")
        return nll_and_grad(flow, x, backend)
    resolve_backend(backend, "value_and_grad")
    if loss == "reverse_kl":
        return reverse_kl_and_grad(flow, **kwargs)
    raise ValueError(f"value_and_grad: loss must be 'nll' or 'reverse_kl'; got {loss!r}")
