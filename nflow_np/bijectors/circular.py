"""Maps of angles: a rotation of the circle, the mixing layer of NCSF's flows on tori."""

import math

import numpy as np

from .._validation import check_interval, resolve_dtype
from .base import Bijector
from .elementwise import ElementwiseBijector, _param
from .spline import _positive_real


class CircularShift(ElementwiseBijector):
    """A rotation of the circle ``[-bound, bound)``: ``y = wrap(x + shift)``, log-det 0.

    ``wrap(v) = v - 2B floor((v + B) / (2B))`` brings a value back into
    ``[-B, B)`` (``B = bound``, pi by default), so each coordinate turns by
    ``shift`` on the circle ``-B ~ B``; the inverse turns it back,
    ``x = wrap(y - shift)``. Read on the circle the map is smooth with slope 1
    (log-det 0) and ``shift`` is a trainable angle with ``dy/dshift = 1``; read
    on the interval it jumps by ``2B`` where ``x + shift`` crosses ``+-B``, the
    seam, where neither derivative exists. Inputs must lie in ``[-B, B]``
    (``B`` and ``-B`` are the same angle: both map to ``wrap(-B + shift)``).

    Between circular-spline layers, which all fix the angle ``+-B``, a
    rotation moves that fixed point, as in Rezende et al.'s flows on tori.

    Parameters
    ----------
    shift : array_like
        The rotation angle of each coordinate; broadcasts against the input.
    bound : float, default pi
    dtype : dtype, optional
        float64 unless ``shift`` is a float32 array or ``dtype`` says otherwise.
    name : str, optional

    References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan and
    Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020.
    """

    def __init__(self, shift, *, bound=math.pi, dtype=None, name=None):
        super().__init__(dtype=resolve_dtype(dtype, shift, where=type(self).__name__), name=name)
        self.bound = _positive_real(bound, self.name, "bound")
        if not self.bound > 0:
            raise ValueError(f"{self.name}: bound must be a finite positive number; got {bound!r}")
        self.params["shift"] = _param(shift, self.dtype, f"{self.name}.__init__", "shift")

    def _check(self, arr, domain, method, argname):
        super()._check(arr, None, method, argname)
        bound = arr.dtype.type(self.bound)
        check_interval(arr, -bound, bound, f"{self.name}.{method}", argname, closed=True)

    def _wrap(self, v):
        bound = v.dtype.type(self.bound)
        period = v.dtype.type(2.0 * self.bound)
        # rounding can leave v - period * floor(.) a hair outside [-B, B]
        return np.clip(v - period * np.floor((v + bound) / period), -bound, bound)

    def _fwd(self, x):
        return self._wrap(x + self.params["shift"])

    def _inv(self, y):
        return self._wrap(y - self.params["shift"])

    def _fldj(self, x):
        return 0.0

    def _ildj(self, y):
        return 0.0

    def _derivatives(self, x, y):
        return 1.0, 0, {"shift": (1.0, 0)}

    def lower(self, d):
        from ..kernels.specs import CircularShiftSpec, Unsupported
        shift = self.params["shift"]
        if shift.ndim > 1 or shift.size not in (1, d):
            raise Unsupported(f"{self.name}: a shift of shape {shift.shape} over {d} coordinates is not compiled")
        return CircularShiftSpec(self.params, self.bound)

    def _is_increasing(self):
        # a rotation of the circle is not a monotone map of the interval: no CDF through it
        return Bijector._is_increasing(self)
