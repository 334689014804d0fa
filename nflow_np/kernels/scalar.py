"""Scalar math written once and compiled for both targets: activations, the soft clamp, the affine map (the
affine transform's and ActNorm's), the Adam update and the training loops' divergence rule; the frames'
transforms are in :mod:`.transforms`.

Every function here is plain Python on scalars (``math`` only), and each is
compiled twice from this one source: as a Numba CPU function (a
:func:`~nflow_np.kernels.backend.numba_twin`, compiled with the kernels that
call it) and as a CUDA device function (:func:`nflow_np.kernels.cuda.device.device_function`).
The bijectors' NumPy passes are the reference that the tests hold both to.

Constants come in as arguments (``zero``, ``one``) in the working dtype: a
bare ``0.0`` is a float64 literal, and a float32 GPU kernel that touches one
computes in double precision. CPU callers may pass plain floats.

Activations are codes (0 relu, 1 tanh, 2 elu, anything else linear); their
derivatives are written through the activation's output, which is all a
backward pass keeps.
"""

import math

from .backend import numba_twin

__all__ = ["activate", "activation_grad", "soft_clamp", "soft_clamp_grad", "rational_clamp_grad", "affine_density",
           "affine_sampling", "adam_moments", "adam_update", "average_decay", "average_update", "loss_diverged",
           "loss_level", "circular_wrap"]


@numba_twin
def activate(v, act, zero):
    """relu (0), tanh (1), elu (2); anything else is linear."""
    if act == 0:
        return max(v, zero)     # NaN stays NaN (max keeps its first argument unless the second is larger)
    if act == 1:
        return math.tanh(v)
    if act == 2:
        return v if v > zero else math.expm1(v)
    return v


@numba_twin
def activation_grad(h, act, zero, one):
    """The derivative of activation ``act``, written through its output ``h``."""
    if act == 0:
        return one if h > zero else zero
    if act == 1:
        return one - h * h
    if act == 2:
        return one if h >= zero else h + one
    return one


@numba_twin
def soft_clamp(raw, clamp, zero):
    """The log-scale ``s = clamp tanh(raw / clamp)`` (``clamp <= 0``: ``s = raw``)."""
    return clamp * math.tanh(raw / clamp) if clamp > zero else raw


@numba_twin
def soft_clamp_grad(s, clamp, zero, one):
    """``ds/draw`` of :func:`soft_clamp`, written through the clamped value ``s``: ``1 - (s / clamp)^2``."""
    if clamp > zero:
        q = s / clamp
        return one - q * q
    return one


@numba_twin
def rational_clamp_grad(s, clamp, zero, one):
    """``ds/draw`` of the rational soft clamp ``s = raw / (1 + |raw| / clamp)`` (the affine transform's), written
    through ``s``: ``(1 - |s| / clamp)^2``. Like :func:`soft_clamp` that clamp is odd, has slope 1 at 0 and tends
    to ``+-clamp``, but its slope decays like ``raw^-2`` instead of exponentially."""
    if clamp > zero:
        q = one - abs(s) / clamp
        return q * q
    return one


@numba_twin
def affine_density(y, shift, s):
    """The density direction of ``y = x exp(s) + shift``: ``x = (y - shift) exp(-s)`` (log-det ``-s``)."""
    return (y - shift) * math.exp(-s)


@numba_twin
def affine_sampling(x, shift, s):
    """The sampling direction: ``y = x exp(s) + shift`` (log-det ``s``)."""
    return x * math.exp(s) + shift


@numba_twin
def adam_moments(g, m, v, beta1, beta2):
    """Adam's moment updates for one coordinate: ``(beta1 m + (1 - beta1) g, beta2 v + (1 - beta2) g^2)``."""
    return beta1 * m + (1.0 - beta1) * g, beta2 * v + (1.0 - beta2) * g * g


@numba_twin
def adam_update(theta, m, v, lr, weight_decay, step, corr2, eps):
    """The new parameter: decoupled weight decay, then ``step m / (sqrt(v / corr2) + eps)`` (``step = lr / corr1``)."""
    return theta - theta * (lr * weight_decay) - step * m / (math.sqrt(v / corr2) + eps)


# The training loops' moving average of the parameters (``fit(average=...)``): after the ``count``-th accepted
# step (counting from 0), ``avg += (1 - decay) (theta - avg)`` with ``decay = min(beta, (1 + count) / (10 + count))``.
# The warm-up (as TensorFlow's ExponentialMovingAverage with ``num_updates``) makes the average span about the last
# tenth of a short run instead of dragging the starting point along; ``beta`` caps the span at about
# ``1 / (1 - beta)`` steps. The arithmetic is float64 whatever the parameters' dtype.


@numba_twin
def average_decay(count, beta):
    """The moving average's decay at its ``count``-th update: ``min(beta, (1 + count) / (10 + count))``."""
    return min(beta, (1.0 + count) / (10.0 + count))


@numba_twin
def average_update(avg, theta, decay):
    """One coordinate of the moving average moved towards ``theta``: ``avg + (1 - decay) (theta - avg)``."""
    return avg + (1.0 - decay) * (theta - avg)


# The divergence rule of the training loops (every backend applies it, from this one source). A loss is
# "diverged" when it lies far above the level of the losses before it: more than DIVERGENCE_FACTOR times
# (|level| + spread + 1) above the level, where level and spread are moving averages (weight LEVEL_WEIGHT) of
# the accepted losses and of their distance to the level. Normal training never comes near that: its losses
# fall, or wander by a few times their spread; a learning rate too large for the flow throws the loss up by
# tens of orders of magnitude. ``watch`` is float64 ``[level, spread, seen]``; ``seen < 0`` turns the rule off.
DIVERGENCE_FACTOR = 1000.0
LEVEL_WEIGHT = 0.1


@numba_twin
def loss_diverged(loss, level, spread, seen):
    """Whether a finite ``loss`` lies far above ``level`` (see ``DIVERGENCE_FACTOR``); never before a first
    loss was seen."""
    if seen <= 0.0:
        return False
    return loss > level + DIVERGENCE_FACTOR * (abs(level) + spread + 1.0)


@numba_twin
def loss_level(loss, level, spread, seen):
    """``(level, spread, seen)`` after an accepted finite ``loss``: the first one sets the level, later ones move
    the averages by ``LEVEL_WEIGHT``; a rule that is off (``seen < 0``) stays off."""
    if seen < 0.0:
        return level, spread, seen
    if seen == 0.0:
        return loss, 0.0, 1.0
    distance = abs(loss - level)
    return level + LEVEL_WEIGHT * (loss - level), spread + LEVEL_WEIGHT * (distance - spread), seen + 1.0


@numba_twin
def circular_wrap(v, bound, period, one):
    """``v - 2B floor((v + B) / 2B)`` clipped to ``[-B, B]`` (``period = 2B``), the wrap of
    :class:`~nflow_np.bijectors.CircularShift`. The floor is taken in the working dtype, ``t = q - q mod 1``, less one where that rounded up."""
    q = (v + bound) / period
    t = q - q % one
    if t > q:
        t -= one
    w = v - period * t
    if w < -bound:
        return -bound
    if w > bound:
        return bound
    return w
