"""Optimizers that update parameter arrays in place from gradient dicts.

Each optimizer's whole state (hyperparameters, step count and per-parameter
buffers such as Adam's moments) comes out of :meth:`Optimizer.state_dict` as a
snapshot and goes back in, checked, through :meth:`Optimizer.load_state_dict`,
as with PyTorch's optimizers.
"""

import math
import numbers
import types
from collections.abc import Mapping

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


def _real(value, key, where):
    """``value`` as a float, or TypeError for anything but a real number (bool included)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {key!r} must be a real number; got {type(value).__name__} {value!r}")
    return float(value)


def _non_negative(value, key, where):
    value = _real(value, key, where)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{where}: {key!r} must be a finite number >= 0; got {value!r}")
    return value


def _clip_norm(value, where):
    if value is None:
        return None
    value = _real(value, "clip_norm", where)
    if not value > 0:
        raise ValueError(f"{where}: 'clip_norm' must be positive or None; got {value!r}")
    return value


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

    Notes
    -----
    :meth:`state_dict` and :meth:`load_state_dict` save and restore
    everything ``step`` depends on, so that an optimizer rebuilt on the same
    parameters continues exactly where another one stopped. A subclass
    declares its hyperparameters in ``_hyper_keys`` (checked by
    ``_check_hyper``) and its per-parameter buffers in ``_buffers()``.
    """

    _hyper_keys = ()

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

    # ------------------------------------------------------------------ state
    def _buffers(self):
        """Per-parameter state: buffer name -> {parameter name: live array}."""
        return {}

    def _hyper(self):
        """The subclass's hyperparameters, as plain Python values."""
        return {}

    def _check_hyper(self, state, where):
        """``state``'s subclass hyperparameters checked and normalized, or TypeError/ValueError."""
        return {}

    def state_dict(self):
        """A snapshot of everything ``step`` depends on.

        Returns
        -------
        dict
            ``"lr"`` (float), ``"steps"`` (int, the updates applied so far),
            ``"clip_norm"`` (float or None), the subclass's hyperparameters,
            and one dict per buffer (Adam: ``"m"`` and ``"v"``; SGD:
            ``"velocity"``) from parameter name to a *copy* of its array: later
            steps do not change the snapshot, nor does changing the snapshot
            change the optimizer. Scalars are plain Python values (JSON can
            store them); buffers have the dtype and shape of their parameter.
        """
        state = {"lr": float(self.lr), "steps": int(self.steps), "clip_norm": None if self.clip_norm is None
                 else float(self.clip_norm)}
        state.update(self._hyper())
        for key, arrays in self._buffers().items():
            state[key] = {name: array.copy() for name, array in arrays.items()}
        return state

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict`, checked in full before anything changes.

        The buffers are copied into the optimizer's own arrays, in place (code
        holding them, such as a compiled trainer, sees the new values); the
        hyperparameters, ``lr`` and ``steps`` are set. ``state`` is not kept.

        Parameters
        ----------
        state : dict
            Exactly the keys :meth:`state_dict` returns. Each buffer must name
            exactly this optimizer's parameters, with arrays of their shape and
            dtype (no casting) holding finite values.

        Returns
        -------
        None

        Raises
        ------
        TypeError
            ``state`` is not a dict, a buffer not a dict of ndarrays, or a
            scalar of the wrong type.
        ValueError
            Missing or unknown keys or parameter names, a shape or dtype that
            differs from the parameter's, a non-finite value, or a
            hyperparameter out of range. The optimizer is then unchanged.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{where}: state must be a dict as returned by state_dict(); got {type(state).__name__}")
        buffers = self._buffers()
        expected = {"lr", "steps", "clip_norm", *self._hyper_keys, *buffers}
        missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unknown:
            raise ValueError(f"{where}: the state has keys {sorted(map(str, state))}; expected {sorted(expected)}"
                             + (f" (missing {missing})" if missing else "")
                             + (f" (unknown {unknown})" if unknown else ""))
        lr = _non_negative(state["lr"], "lr", where)   # 0 is reachable: fit halves lr after each rejected step
        steps = state["steps"]
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"{where}: 'steps' must be an int; got {type(steps).__name__} {steps!r}")
        if steps < 0:
            raise ValueError(f"{where}: 'steps' must be >= 0; got {steps}")
        clip_norm = _clip_norm(state["clip_norm"], where)
        hyper = self._check_hyper(state, where)
        for key, live in buffers.items():
            self._check_buffer(state[key], key, live, where)
        for key, live in buffers.items():
            for name, target in live.items():
                np.copyto(target, state[key][name])
        for key, value in hyper.items():
            setattr(self, key, value)
        self.lr, self.steps, self.clip_norm = lr, int(steps), clip_norm

    def _check_buffer(self, given, key, live, where):
        if not isinstance(given, Mapping):
            raise TypeError(f"{where}: {key!r} must be a dict from parameter name to ndarray; got "
                            f"{type(given).__name__}")
        missing, unknown = sorted(set(live) - set(given)), sorted(set(given) - set(live))
        if missing or unknown:
            raise ValueError(f"{where}: {key!r} names parameters {sorted(map(str, given))}; this optimizer has "
                             f"{sorted(live)}" + (f" (missing {missing})" if missing else "")
                             + (f" (unknown {unknown})" if unknown else ""))
        for name, target in live.items():
            value = given[name]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where}: {key}[{name!r}] must be an ndarray; got {type(value).__name__}")
            if value.shape != target.shape:
                raise ValueError(f"{where}: {key}[{name!r}] has shape {value.shape}; the parameter has "
                                 f"{target.shape}")
            if value.dtype != target.dtype:
                raise ValueError(f"{where}: {key}[{name!r}] has dtype {value.dtype}; the parameter has "
                                 f"{target.dtype}")
            if not np.isfinite(value).all():
                raise ValueError(f"{where}: {key}[{name!r}] holds NaN or infinity")


def global_norm(grads):
    """The L2 norm of all gradients together, accumulated in float64 as the compiled steps do (inf when the sum of
    squares overflows even there: such a step is rejected on every backend)."""
    total = 0.0
    for g in grads.values():
        g = np.asarray(g, dtype=np.float64).ravel()
        total += float(np.dot(g, g))
    return float(np.sqrt(total))


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (heavy ball or Nesterov) and L2 weight decay.

    ``state_dict()`` holds ``lr``, ``steps``, ``clip_norm``, ``momentum``,
    ``nesterov``, ``weight_decay`` and ``velocity`` (parameter name -> array).
    """

    _hyper_keys = ("momentum", "nesterov", "weight_decay")

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

    @property
    def velocity(self):
        """The momentum buffers, parameter name -> array: the live arrays ``step`` updates (a read-only mapping;
        use :meth:`state_dict` for a snapshot)."""
        return types.MappingProxyType(self._velocity)

    def _buffers(self):
        return {"velocity": self._velocity}

    def _hyper(self):
        return {"momentum": float(self.momentum), "nesterov": bool(self.nesterov),
                "weight_decay": float(self.weight_decay)}

    def _check_hyper(self, state, where):
        momentum = _real(state["momentum"], "momentum", where)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{where}: 'momentum' must lie in [0, 1); got {momentum!r}")
        nesterov = state["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{where}: 'nesterov' must be a bool; got {type(nesterov).__name__} {nesterov!r}")
        return {"momentum": momentum, "nesterov": bool(nesterov),
                "weight_decay": _non_negative(state["weight_decay"], "weight_decay", where)}

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

    ``state_dict()`` holds ``lr``, ``steps``, ``betas``, ``eps``,
    ``weight_decay``, ``clip_norm`` and the moments ``m`` and ``v``
    (parameter name -> array); :attr:`m` and :attr:`v` give the live arrays.

    References: Kingma, D. P. and Ba, J., "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    _hyper_keys = ("betas", "eps", "weight_decay")

    def __init__(self, parameters, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(parameters, lr, clip_norm=clip_norm)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"Adam: betas must lie in [0, 1); got {betas}")
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"Adam: eps must be a finite number >= 0; got {eps}")
        if not (np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"Adam: weight_decay must be a finite number >= 0; got {weight_decay}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = weight_decay
        self._m = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._v = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._flatten_moments()

    # ------------------------------------------------------------------ one flat update
    # When every parameter has one dtype, the moments live in two flat arrays and ``m``/``v`` hold views of them
    # (still one live array per parameter), so a step over a full gradient dict is a handful of whole-vector
    # operations instead of a dozen per parameter. Each operation is the one ``_update`` does, elementwise in the
    # same order and dtype, so both paths give the same bits; a partial dict, a gradient of another dtype or a
    # subclass that changes ``_update`` takes the per-parameter path.

    def _flatten_moments(self):
        """Move ``m``/``v`` into flat buffers (values kept) and lay out the step's scratch; no-op for mixed dtypes."""
        self._flat = None
        dtypes = {p.dtype for p in self.params.values()}
        if len(dtypes) != 1:
            return
        dtype = dtypes.pop()
        layout, offset = {}, 0
        for name, p in self.params.items():
            layout[name] = (offset, p.size, p.shape)
            offset += p.size
        flat_m, flat_v = np.empty(offset, dtype), np.empty(offset, dtype)
        for flat, moments in ((flat_m, self._m), (flat_v, self._v)):
            for name, (off, size, shape) in layout.items():
                view = flat[off:off + size].reshape(shape)
                view[...] = moments[name]
                moments[name] = view
        # ``names``: the parameters in flat order; ``g``/``g64``: the gradient, as the step's dtype and as float64
        # (its views per name give global_norm's per-parameter dot products); ``t1``/``t2``: scratch
        g = np.empty(offset, dtype)
        g64 = np.empty(offset, np.float64)
        self._flat = dict(dtype=dtype, layout=layout, names=list(layout), m=flat_m, v=flat_v, g=g, g64=g64,
                          g64_views={name: g64[off:off + size] for name, (off, size, _) in layout.items()},
                          t1=np.empty(offset, dtype), t2=np.empty(offset, dtype), source_names=None,
                          shapes=[shape for _, _, shape in layout.values()])
        # each parameter with its slice of the update (t1)
        self._flat["params"] = [(self.params[name], self._flat["t1"][off:off + size].reshape(shape))
                                for name, (off, size, shape) in layout.items()]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_flat"] = None       # views do not survive a deep copy or a pickle; rebuilt from the moments' values
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._m, self._v = dict(self._m), dict(self._v)
        self._flatten_moments()

    def __copy__(self):
        # a shallow copy shares the parameters and the moments with the original, flat buffers included
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def _from_source(self, grads):
        """The flat vector behind ``grads`` (a compiled pass's :class:`~nflow_np.kernels.plan.FlatGradients`), when
        its order, sizes, shapes and dtype are this optimizer's and every entry is still the array handed out;
        else None. Read-only for the caller: the vector's slices are the caller's gradient arrays."""
        source = getattr(grads, "flat_source", None)
        if source is None or type(grads).__name__ != "FlatGradients":
            return None
        vector, names, views = source
        flat = self._flat
        if flat["source_names"] is not names:
            # a program's name list: checked once against this optimizer's layout
            if names != flat["names"] or vector.dtype != flat["dtype"] or vector.size != flat["g"].size:
                return None
            flat["source_names"] = names
        if len(grads) != len(views):
            return None
        for view, name, shape in zip(views, names, flat["shapes"]):
            if grads.get(name) is not view or view.shape != shape:
                return None
        return vector

    def _flat_gradient(self, grads):
        """The gradient as one vector in the flat order, or None when ``grads`` does not fit the flat step (a partial
        or unknown name, a wrong shape, another dtype or not an ndarray: the per-parameter path checks and reports).
        The vector may be the caller's (read it only)."""
        flat = self._flat
        if flat is None or type(self)._update is not Adam._update or type(self)._checked is not Optimizer._checked:
            return None
        params = self.params
        if len(params) != len(flat["params"]) or any(params.get(name) is not param for name, (param, _)
                                                     in zip(flat["names"], flat["params"])):
            return None     # ``params`` edited since: the per-parameter path steps what it holds now
        vector = self._from_source(grads)
        if vector is not None:
            return vector
        if len(grads) != len(flat["layout"]) or grads.keys() != flat["layout"].keys():
            return None
        dtype, parts = flat["dtype"], []
        for name, (_, _, shape) in flat["layout"].items():
            g = grads[name]
            if type(g) is not np.ndarray or g.dtype != dtype or g.shape != shape:
                return None
            parts.append(g.reshape(-1))
        return np.concatenate(parts, out=flat["g"])

    def step(self, grads):
        """Apply one update; returns the gradient's global norm before clipping."""
        g = self._flat_gradient(grads)
        if g is None:
            return super().step(grads)
        flat = self._flat
        # global_norm's sum, bit for bit: float64 dot products per parameter, added in the dict's order
        np.copyto(flat["g64"], g)
        views, total = flat["g64_views"], 0.0
        for name in grads:
            view = views[name]
            total += float(np.dot(view, view))
        norm = float(np.sqrt(total))
        if not np.isfinite(norm):
            raise FloatingPointError(f"{type(self).__name__}.step: the gradient is not finite")
        if self.clip_norm is not None and norm > self.clip_norm:
            g = np.multiply(g, self.clip_norm / norm, out=flat["g"])
        self.steps += 1
        b1, b2 = self.betas
        m, v, t1, t2 = flat["m"], flat["v"], flat["t1"], flat["t2"]
        m *= b1
        m += np.multiply(1.0 - b1, g, out=t1)
        v *= b2
        t1 = np.multiply(1.0 - b2, g, out=t1)
        t1 *= g
        v += t1
        corr1 = 1.0 - b1 ** self.steps
        corr2 = 1.0 - b2 ** self.steps
        # (lr / corr1) * m / (sqrt(v / corr2) + eps), as _update computes it
        t2 = np.divide(v, corr2, out=t2)
        np.sqrt(t2, out=t2)
        t2 += self.eps
        t1 = np.multiply(self.lr / corr1, m, out=t1)
        t1 /= t2
        if self.weight_decay:
            decay = self.lr * self.weight_decay
            for param, update in flat["params"]:
                param -= param * decay
                param -= update
        else:
            for param, update in flat["params"]:
                param -= update
        return norm

    @property
    def m(self):
        """First moments, parameter name -> array: the live arrays ``step`` updates in place (a read-only
        mapping; writing into an array changes the optimizer's state, unchecked; :meth:`state_dict` gives a
        snapshot and :meth:`load_state_dict` restores one, checked)."""
        return types.MappingProxyType(self._m)

    @property
    def v(self):
        """Second moments (uncentred variances), parameter name -> array; live, as :attr:`m`."""
        return types.MappingProxyType(self._v)

    def _buffers(self):
        return {"m": self._m, "v": self._v}

    def _hyper(self):
        return {"betas": self.betas, "eps": self.eps, "weight_decay": float(self.weight_decay)}

    def _check_hyper(self, state, where):
        betas = state["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"{where}: 'betas' must be a pair of numbers; got {betas!r}")
        b1, b2 = (_real(b, "betas", where) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{where}: 'betas' must lie in [0, 1); got {tuple(betas)}")
        return {"betas": (b1, b2), "eps": _non_negative(state["eps"], "eps", where),
                "weight_decay": _non_negative(state["weight_decay"], "weight_decay", where)}

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
