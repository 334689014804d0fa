"""Weight initializers for the dense layers in :mod:`nflow_np.nn`.

Weights are drawn in float64 and then cast, so a float32 network and a
float64 network built from the same seed hold the same numbers up to
rounding; that is what lets the tests compare the two dtypes directly.
"""

import math

import numpy as np

from .._validation import as_generator

__all__ = ["he_normal", "glorot_normal", "init_std", "dense_weight"]


def he_normal(fan_in, fan_out):
    """Standard deviation ``sqrt(2 / fan_in)`` of He (Kaiming) normal initialization.

    References: He, Zhang, Ren and Sun, "Delving Deep into Rectifiers", ICCV 2015.
    """
    return math.sqrt(2.0 / max(fan_in, 1))


def glorot_normal(fan_in, fan_out):
    """Standard deviation ``sqrt(2 / (fan_in + fan_out))`` of Glorot (Xavier) normal initialization.

    References: Glorot and Bengio, "Understanding the difficulty of training
    deep feedforward neural networks", AISTATS 2010.
    """
    return math.sqrt(2.0 / max(fan_in + fan_out, 1))


# tanh is symmetric and nearly linear at 0, which Glorot's variance balance
# assumes; the rectifier family halves the variance, which He compensates for.
_RULES = {"relu": he_normal, "elu": he_normal, "silu": he_normal, "tanh": glorot_normal}


def init_std(activation, fan_in, fan_out):
    """Standard deviation used for a weight matrix feeding (or following) ``activation`` units."""
    return _RULES[activation](fan_in, fan_out)


def dense_weight(rng, activation, fan_in, fan_out, dtype=np.float64):
    """A ``(fan_in, fan_out)`` weight matrix drawn with the rule for ``activation``.

    Parameters
    ----------
    rng : numpy.random.Generator or int or None
    activation : {"relu", "tanh", "elu", "silu"}
    fan_in, fan_out : int
    dtype : float32 or float64

    Returns
    -------
    ndarray, shape (fan_in, fan_out), of ``dtype``
    """
    rng = as_generator(rng)
    std = init_std(activation, fan_in, fan_out)
    return (rng.standard_normal((fan_in, fan_out)) * std).astype(dtype)
