"""The elementwise transforms of the coupling and autoregressive frames: their scalar math, written once.

A transform is one module here. Its scalar math is plain Python on scalars
(``math`` only), compiled as Numba CPU functions (:func:`~nflow_np.kernels.backend.numba_twin`)
and as CUDA device functions (:func:`nflow_np.kernels.cuda.device.device_version`) from this one
source; the frames (:mod:`nflow_np.kernels.frames` on the CPU, :mod:`nflow_np.kernels.cuda.frames`
on the GPU) call it per element and know nothing else about it. A module defines:

``SPEC``
    the spec class (:mod:`nflow_np.kernels.specs`) a bijector lowers this transform to;
``constants(spec)``
    the floats the scalar math reads, host side, in float64; the program stores them, rounded
    once to the flow's dtype, as ``c`` (``c[0] = 0`` and ``c[1] = 1``, so the math has typed
    zeros and ones);
``settings(c)``
    ``c`` as the tuple ``st`` the other functions take;
``density(v, p, r, base, stride, st) -> (out, log-det)``
    the density direction (data to base) of one element with input ``v``;
``sampling(v, p, r, base, stride, st) -> (out, log-det)``
    the sampling direction (base to data);
``density_vjp(v, g, gld, p, gp, r, base, stride, st) -> dL/dv``
    the density direction's VJP at input ``v``, from ``g = dL/dout`` and ``gld = dL/dlog-det``;
    it writes the gradients of the (raw) parameters into ``gp`` at their places.

A pass may leave the element's parameters in ``p`` *prepared*: rewritten, in
place, into a form that is cheaper for the VJP (the affine transform's clamped
log-scale, the spline's softmax weights). ``density_vjp`` reads the parameters
as ``density`` left them: the frames run it on the network output of the pass
it differentiates, which is never evaluated twice.

An element's ``P`` parameters (``SPEC.outputs_per_coordinate``) are read from the 2-D
conditioner output ``p`` at row ``r``, columns ``base + q * stride`` (``q = 0..P-1``): the
frames choose ``base`` and ``stride`` from the network's output layout.

Adding a transform to both frames, on both targets, is a new module here with its scalar
math, one line in :data:`MODULES`, its spec and the bijector-side transform that lowers to it.
"""

from .. import specs
from . import additive, affine, circular_spline, sigmoidal, sinh_arcsinh, spline

__all__ = ["MODULES", "module_for", "name_for"]

# name -> module; the name is part of the compiled entries' names and cache keys
MODULES = {"affine": affine, "additive": additive, "spline": spline, "sinh_arcsinh": sinh_arcsinh,
           "circular_spline": circular_spline, "sigmoidal": sigmoidal}
_BY_SPEC = {module.SPEC: name for name, module in MODULES.items()}


def name_for(spec):
    """The registered name of a transform spec, or None when no transform module compiles it."""
    return _BY_SPEC.get(type(spec))


def module_for(name):
    return MODULES[name]
