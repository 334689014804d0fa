"""The scalar math of :mod:`nflow_np.kernels.scalar` as CUDA device functions, compiled from that one source."""

from .. import scalar as _source
from .device import device_function

__all__ = list(_source.__all__)

activate = device_function(_source.activate)
activation_grad = device_function(_source.activation_grad)
soft_clamp = device_function(_source.soft_clamp)
soft_clamp_grad = device_function(_source.soft_clamp_grad)
affine_density = device_function(_source.affine_density)
affine_sampling = device_function(_source.affine_sampling)
affine_density_vjp = device_function(_source.affine_density_vjp)
affine_sampling_vjp = device_function(_source.affine_sampling_vjp)
adam_moments = device_function(_source.adam_moments)
adam_update = device_function(_source.adam_update)
