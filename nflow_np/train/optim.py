"""Optimizers that update parameter arrays in place from gradient dicts."""

import numpy as np


def _named(parameters, where):
    named = dict(parameters)
    if not named:
        raise ValueError(f"{where}: no parameters to optimize")
    for name, array in named.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise TypeError(f"{where}: parameter {name!r} must be a float ndarray; got {type(array).__name__}")
        if not array.flags.writeable:
            raise ValueError(f"{where}: parameter {name!r} is read-only, so it cannot be updated in place")
    return named


class Optimizer:
    """Base optimizer: ``step(grads)`` applies a dict of gradients (same names as ``parameters``) in place.

    Parameters
    ----------
    parameters : iterable of (name, ndarray)
        Usually ``flow.parameters()``; the arrays are updated in place.
    lr : float
        Learning rate.
    clip_norm : float, optional
        Rescale the whole gradient so its global L2 norm is at most this.
    """

    def __init__(self, parameters, lr, *, clip_norm=None):
        where = type(self).__name__
        self.params = _named(parameters, where)
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"{where}: lr must be positive; got {lr}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"{where}: clip_norm must be positive; got {clip_norm}")
        self.lr = float(lr)
        self.clip_norm = clip_norm
        self.steps = 0

    def _checked(self, grads):
        where = f"{type(self).__name__}.step"
        unknown = set(grads) - set(self.params)
        if unknown:
            raise KeyError(f"{where}: gradients for unknown parameters {sorted(unknown)}")
        for name, g in grads.items():
            if np.shape(g) != self.params[name].shape:
                raise ValueError(f"{where}: gradient of {name!r} has shape {np.shape(g)}; "
                                 f"the parameter has {self.params[name].shape}")
        norm = global_norm(grads)
        if not np.isfinite(norm):
            raise FloatingPointError(f"{where}: the gradient is not finite")
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm
        return scale, norm

    def step(self, grads):
        """Apply one update; returns the gradient's global norm before clipping."""
        scale, norm = self._checked(grads)
        self.steps += 1
        for name, g in grads.items():
            self._update(name, self.params[name], g * scale if scale != 1.0 else g)
        return norm

    def state_dict(self):
        return {"lr": self.lr, "steps": self.steps}


def global_norm(grads):
    """The L2 norm of all gradients together."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (heavy ball or Nesterov) and L2 weight decay."""

    def __init__(self, parameters, lr=1e-2, *, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        super().__init__(parameters, lr, clip_norm=clip_norm)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1); got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be non-negative; got {weight_decay}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self._velocity = {name: np.zeros_like(p) for name, p in self.params.items()}

    def _update(self, name, param, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            v = self._velocity[name]
            v *= self.momentum
            v += grad
            grad = grad + self.momentum * v if self.nesterov else v
        param -= (self.lr * grad).astype(param.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with decoupled weight decay when ``weight_decay`` > 0 (AdamW).

    References: Kingma, D. P. and Ba, J., "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(self, parameters, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(parameters, lr, clip_norm=clip_norm)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"Adam: betas must lie in [0, 1); got {betas}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = weight_decay
        self._m = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._v = {name: np.zeros_like(p) for name, p in self.params.items()}

    def _update(self, name, param, grad):
        b1, b2 = self.betas
        m, v = self._m[name], self._v[name]
        m *= b1
        m += (1.0 - b1) * grad
        v *= b2
        v += (1.0 - b2) * grad * grad
        corr1 = 1.0 - b1 ** self.steps
        corr2 = 1.0 - b2 ** self.steps
        if self.weight_decay:
            param -= param * (self.lr * self.weight_decay)
        param -= (self.lr / corr1) * m / (np.sqrt(v / corr2) + self.eps)
