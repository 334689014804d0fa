"""The scalar math of :mod:`nflow_np.kernels.scalar` as CUDA device functions, compiled from that one source."""

from .. import scalar as _source
from .device import device_version

__all__ = list(_source.__all__)

activate = device_version(_source.activate)
activation_grad = device_version(_source.activation_grad)
soft_clamp = device_version(_source.soft_clamp)
soft_clamp_grad = device_version(_source.soft_clamp_grad)
rational_clamp_grad = device_version(_source.rational_clamp_grad)
affine_density = device_version(_source.affine_density)
affine_sampling = device_version(_source.affine_sampling)
adam_moments = device_version(_source.adam_moments)
adam_update = device_version(_source.adam_update)
average_decay = device_version(_source.average_decay)
average_update = device_version(_source.average_update)
loss_diverged = device_version(_source.loss_diverged)
loss_level = device_version(_source.loss_level)
circular_wrap = device_version(_source.circular_wrap)
