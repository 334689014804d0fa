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
    """Gradient reaching z from the base log-density, and the base's own parameter gradients by local name.

    ``grad_lp`` is the upstream gradient of each flow-level log-density. A base
    with trainable ``params`` provides ``_log_prob_param_grads(z, grad_lp)``,
    the gradients of ``sum(grad_lp * base.log_prob(z))``; fixed bases have none.
    """
    base = flow.distribution
    score = base._log_prob_grad(z)
    grad_z = _expand_to(grad_lp, score.shape) * score
    if not dict(base.parameters()):
        return grad_z, {}
    param_grads = getattr(base, "_log_prob_param_grads", None)
    if param_grads is None:
        raise ValueError(f"{base.name} has trainable parameters but no _log_prob_param_grads(x, grad_lp), so it "
                         f"cannot be trained as the base of a flow")
    # a base of lower event rank than the flow sees each event's gradient on every summed log-density
    return grad_z, param_grads(z, _expand_to(grad_lp, z.shape[:z.ndim - base.event_ndims]))


def nll_and_grad(flow, x, backend=None, context=None):
    """Mean negative log-likelihood of ``x`` and its gradient for every parameter of ``flow``.

    One inverse (density) pass through the bijector and one backward pass:
    ``loss = -mean(log p(x))`` (``log p(x | context)`` for a conditional flow).
    With ``backend="numba"`` a flow the compiled program covers takes both
    passes in one compiled call. A loss that is not finite (extreme data
    overflowing) comes back as it is, with NaN gradients, on every backend;
    :func:`fit` rejects such a step and goes on.
    """
    where = "value_and_grad"
    x = flow._prepare(x, where)
    extra, embedding_cache = flow._embedded_context(context, x, where)
    # the compiled program returns no context gradient: a flow with an embedding trains on the NumPy passes
    program = None if embedding_cache is not None else flow._compiled(backend, where)
    if program is not None and x.ndim >= 1 and x.size:
        loss, gtheta = program.nll_and_grad(x.reshape(-1, flow.event_shape[0]), flow._context_rows(extra))
        return loss, program.gradients(gtheta)
    bijector = flow.bijector
    z, log_det, ctx = bijector._inverse_pass(x, *extra)
    log_prob = flow._base_log_prob(z) + bijector._reduce(log_det, flow.event_ndims)
    loss = -float(np.mean(log_prob))
    if not np.isfinite(loss):
        # as the compiled backends do: the loss says what went wrong, and the gradient is NaN (a training loop
        # rejects the step); the backward passes would refuse their non-finite upstream gradients
        return loss, {name: np.full_like(p, np.nan) for name, p in flow.parameters()}
    grad_lp = np.full(log_prob.shape, -1.0 / log_prob.size, dtype=log_prob.dtype)
    grad_z, base_grads = _base_grads(flow, z, grad_lp)
    _, grads = bijector._inverse_backward(ctx, grad_z.astype(z.dtype, copy=False),
                                          _expand_to(grad_lp, log_det.shape))
    # the context is data, not a parameter: its gradient only trains an embedding
    embedding_grads = flow._embedding_backward(grads, embedding_cache)
    return loss, {**{f"distribution.{k}": v for k, v in base_grads.items()},
                  **{f"bijector.{k}": v for k, v in grads.items()}, **embedding_grads}


def _check_reparameterizable(flow, where):
    """Refuse a base with trainable parameters: the reverse KL differentiates through samples ``z ~ base``,
    which are not reparameterizable in, say, a mixture's weights or a Student's t degrees of freedom."""
    trainable = [name for name, _ in flow.distribution.parameters()]
    if trainable:
        raise ValueError(f"{where}: the base distribution {flow.distribution.name} has trainable parameters "
                         f"({', '.join(trainable)}), and its samples are not reparameterizable in them; fit to a "
                         f"target density with a fixed base, e.g. MultivariateNormalDiag(np.zeros(d)) (a trainable "
                         f"base trains by maximum likelihood on data: fit)")


def reverse_kl_and_grad(flow, target_log_prob, n_samples, rng=None, *, target_grad=None, z=None, context=None):
    """Reverse KL up to the target's normalizer, ``mean(log q(x) - log p~(x))`` with ``x = forward(z)``.

    ``z`` are base samples (drawn from ``rng`` when not given); gradients flow
    through the reparameterized samples by the bijector's forward VJP.
    ``target_log_prob(x)`` returns one value per event; ``target_grad(x)``
    its gradient in ``x``. Without ``target_grad`` the gradient is taken by
    central finite differences (``2 d`` extra calls of ``target_log_prob``).
    Minus this loss is the evidence lower bound (ELBO) of the target's normalizer.

    A conditional flow (built with ``context=k``) needs ``context``: one row
    per sample, shape ``(n_samples, k)``, or one row for all, shape ``(k,)``.
    The samples are then drawn from q(x | c), the target is called as
    ``target_log_prob(x, c)`` and ``target_grad(x, c)`` with ``c`` the
    ``(n_samples, k)`` rows, and the loss is ``mean(log q(x | c) - log p~(x | c))``.
    """
    loss, grads, _ = _reverse_kl(flow, target_log_prob, n_samples, rng, target_grad, z, context=context)
    return loss, grads


def _context_for_samples(flow, context, z, where):
    """The bijector's extra pass arguments and the context rows the target sees (None when unconditional)."""
    if not flow.context_size:
        if context is not None:
            raise ValueError(f"{where}: the flow is unconditional (built without a context), so it takes no "
                             f"context; got one of shape {np.shape(context)}")
        return (), None
    if context is None:
        raise ValueError(f"{where}: the flow is conditional (context size {flow.context_size}); pass context= an "
                         f"array of shape (n_samples, {flow.context_size}) or ({flow.context_size},), and a target "
                         f"that takes it: target_log_prob(x, context)")
    extra = flow._context_args(context, z, where, "the samples")
    return extra, np.ascontiguousarray(extra[0])


def _reverse_kl(flow, target_log_prob, n_samples, rng, target_grad, z, refuse_non_finite=True, context=None):
    """:func:`reverse_kl_and_grad`, and whether the target's log-density was finite at every sample. With
    ``refuse_non_finite=False`` one that is not (-inf outside the target's support, NaN where it is undefined)
    gives a NaN loss and NaN gradients, as an overflowing batch does for :func:`nll_and_grad`, instead of raising:
    a training loop rejects the step."""
    where = "reverse_kl"
    bijector = flow.bijector
    _check_reparameterizable(flow, where)
    if z is None:
        if n_samples is None and context is not None and np.ndim(context) == 2:
            n_samples = np.shape(context)[0]
        z = flow.distribution.sample(n_samples, as_generator(rng))
    extra, rows = _context_for_samples(flow, context, z, where)
    target_args = () if rows is None else (rows,)
    x, log_det, ctx = bijector._forward_pass(z, *extra)
    target = np.asarray(target_log_prob(x, *target_args), dtype=x.dtype)
    batch = x.shape[:x.ndim - flow.event_ndims]
    if target.shape != batch:
        raise ValueError(f"{where}: target_log_prob returned shape {target.shape}; expected one value per "
                         f"sample, shape {batch}")
    if refuse_non_finite:
        check_finite(target, where, "target_log_prob(x)")
    elif not np.isfinite(target).all():
        return np.nan, {name: np.full_like(p, np.nan) for name, p in flow.parameters()}, False
    log_q = flow._base_log_prob(z) - bijector._reduce(log_det, flow.event_ndims)
    loss = float(np.mean(log_q - target))
    n = log_q.size
    if target_grad is not None:
        grad_target = as_float_array(target_grad(x, *target_args), x.dtype, where, "target_grad(x)")
        if grad_target.shape != x.shape:
            raise ValueError(f"{where}: target_grad returned shape {grad_target.shape}; expected {x.shape}")
    else:
        grad_target = _finite_difference_grad(lambda p: target_log_prob(p, *target_args), x, flow.event_ndims)
    grad_x = (-grad_target / n).astype(x.dtype, copy=False)
    # d loss / d forward-log-det = -1/n for every event
    grad_ld = np.full(log_det.shape, -1.0 / n, dtype=x.dtype)
    _, grads = bijector._forward_backward(ctx, grad_x, grad_ld)
    grads.pop(CONTEXT_GRAD, None)   # the context is given, not trained
    return loss, {f"bijector.{k}": v for k, v in grads.items()}, True


def mixed_kl_and_grad(flow, target_log_prob, samples, n_samples, forward_weight, rng=None, *, target_grad=None,
                      z=None, context=None, samples_context=None, backend=None):
    """The forward KL from samples mixed with the reverse KL to a density, and its gradient.

    ``loss = beta * mean(-log q(samples)) + (1 - beta) * mean(log q(x) - log p~(x))``
    with ``beta = forward_weight`` in [0, 1] and ``x = forward(z)``, ``z``
    drawn from the base as in :func:`reverse_kl_and_grad`. The first term is
    the forward KL ``KL(p || q)`` up to the entropy of the distribution the
    samples come from (mass-covering: q is penalized wherever p has samples
    and q has none); the second the reverse KL ``KL(q || p)`` up to
    ``log Z`` (mode-seeking). The gradient is the same mix of the two exact
    gradients: :func:`nll_and_grad` (the inverse passes' backward) and
    :func:`reverse_kl_and_grad` (the forward passes' backward). A weight of
    exactly 0 or 1 skips the other term's passes. ``samples_context`` are the
    samples' context rows for a conditional flow, ``context`` those of the
    reverse KL's samples; ``backend`` applies to the forward KL's passes.

    References
    ----------
    F. Noé, S. Olsson, J. Köhler, H. Wu, "Boltzmann generators: Sampling
    equilibrium states of many-body systems with deep learning", Science 365 (2019).
    """
    loss, grads, _ = _mixed_kl(flow, target_log_prob, samples, n_samples, forward_weight, rng, target_grad, z,
                               context, samples_context, backend)
    return loss, grads


def _check_forward_weight(forward_weight, where):
    if isinstance(forward_weight, bool) or not isinstance(forward_weight, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(forward_weight) <= 1.0:
        raise ValueError(f"{where}: forward_weight must be a number in [0, 1]; got {forward_weight!r}")
    return float(forward_weight)


def _mixed_kl(flow, target_log_prob, samples, n_samples, forward_weight, rng, target_grad, z, context,
              samples_context, backend, refuse_non_finite=True):
    """:func:`mixed_kl_and_grad`, and whether the target was finite at every sample (see :func:`_reverse_kl`)."""
    beta = _check_forward_weight(forward_weight, "mixed_kl")
    if beta > 0.0 and samples is None:
        raise ValueError("mixed_kl: a forward_weight above 0 needs samples of the target")
    loss, grads, finite = 0.0, {}, True
    if beta < 1.0:
        reverse, reverse_grads, finite = _reverse_kl(flow, target_log_prob, n_samples, rng, target_grad, z,
                                                     refuse_non_finite, context)
        if beta == 0.0:
            return reverse, reverse_grads, finite
        loss, grads = (1.0 - beta) * reverse, {k: (1.0 - beta) * g for k, g in reverse_grads.items()}
    if beta > 0.0:
        forward, forward_grads = nll_and_grad(flow, samples, backend, samples_context)
        loss += beta * forward
        for k, g in forward_grads.items():
            grads[k] = grads[k] + beta * g if k in grads else beta * g
    return float(loss), grads, finite


def _finite_difference_grad(fn, x, event_ndims):
    from .._finite_diff import default_step, input_vjp

    step = default_step(x.dtype) * np.maximum(1.0, np.abs(x))
    grad, _ = input_vjp(lambda p: np.asarray(fn(p), dtype=p.dtype), x, event_ndims, step)
    return grad


def value_and_grad(flow, x=None, loss="nll", backend=None, context=None, **kwargs):
    """The mean loss and a dict of gradients keyed by the names of ``flow.parameters()``.

    ``loss="nll"``: mean negative log-likelihood of data ``x``.
    ``loss="reverse_kl"``: see :func:`reverse_kl_and_grad` (pass ``target_log_prob``,
    ``n_samples``, ``rng`` and optionally ``target_grad`` or fixed base samples ``z``).
    ``loss="mixed_kl"``: see :func:`mixed_kl_and_grad` (``x`` are the samples;
    pass ``target_log_prob``, ``n_samples``, ``forward_weight``, ``rng``, and
    ``samples_context`` for a conditional flow).
    ``backend`` (``"numpy"``, ``"numba"`` or ``"cuda"``) applies to the NLL; the reverse KL
    runs the bijectors' NumPy passes. ``context``: the conditioning rows of a
    conditional flow (of the data for the NLL, of the samples drawn for the reverse KL).
    """
    _check_flow(flow, "value_and_grad")
    if loss == "nll":
        if x is None:
            raise ValueError("value_and_grad: loss='nll' needs data x")
        return nll_and_grad(flow, x, backend, context)
    resolve_backend(backend, "value_and_grad")
    if loss == "reverse_kl":
        return reverse_kl_and_grad(flow, context=context, **kwargs)
    if loss == "mixed_kl":
        return mixed_kl_and_grad(flow, samples=x, context=context, backend=backend, **kwargs)
    raise ValueError(f"value_and_grad: loss must be 'nll', 'reverse_kl' or 'mixed_kl'; got {loss!r}")
