"""The parameter protocol of :class:`nflow_np.estimator.FlowDensity` and its subclasses: scikit-learn's
``get_params``/``set_params``/``repr``, done here as ``sklearn.base.BaseEstimator`` does it (without importing
scikit-learn), their validation by ``fit``, and the parameters as JSON values for model files."""

import inspect
import math
import numbers

import numpy as np

from ._estimator_checks import _check_int, _equal
from ._estimator_flows import check_flow_name


class _ParamsMixin:
    # ------------------------------------------------------------------ parameters (BaseEstimator's protocol)
    @classmethod
    def _get_param_names(cls):
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """The constructor parameters.

        Parameters
        ----------
        deep : bool, default True
            Ignored: no parameter is itself an estimator.

        Returns
        -------
        dict
            Parameter name -> value, exactly the objects stored.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters; they are validated by the next ``fit``.

        Parameters
        ----------
        **params
            Parameter name -> new value.

        Returns
        -------
        FlowDensity
            ``self``.
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__}.set_params: invalid parameter {name!r}; valid parameters are "
                                 f"{', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
                    if p.name != "self"}
        changed = []
        for name in defaults:
            value = getattr(self, name, None)
            default = defaults[name]
            same = value is default or (type(value) is type(default) and _equal(value, default))
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validated_params(self):
        """The parameters checked and normalized, or ``ValueError`` naming the bad one."""
        flow = check_flow_name(self.flow, "FlowDensity")
        if not isinstance(self.conditional, (bool, np.bool_)):
            raise ValueError(f"FlowDensity: conditional must be True or False; got {self.conditional!r}")
        hidden = self.hidden
        if isinstance(hidden, numbers.Integral) and not isinstance(hidden, (bool, np.bool_)):
            hidden = (hidden,)
        try:
            hidden = tuple(hidden)
        except TypeError:
            raise ValueError(f"FlowDensity: hidden must be a tuple of positive ints; got {self.hidden!r}") from None
        if not all(isinstance(h, numbers.Integral) and not isinstance(h, (bool, np.bool_)) and h >= 1
                   for h in hidden):
            raise ValueError(f"FlowDensity: hidden must be a tuple of positive ints; got {self.hidden!r}")
        lr = self.lr
        if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"FlowDensity: lr must be a positive finite number; got {lr!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real) or \
                not 0.0 <= fraction < 1.0:
            raise ValueError(f"FlowDensity: validation_fraction must lie in [0, 1); got {fraction!r}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"FlowDensity: dtype must be 'float64' or 'float32'; got {self.dtype!r}")
        if not (self.lr_schedule is None or (isinstance(self.lr_schedule, str) and
                                             self.lr_schedule in ("cosine", "plateau"))):
            raise ValueError(f"FlowDensity: lr_schedule must be 'cosine', 'plateau' or None; got "
                             f"{self.lr_schedule!r}")
        return {"flow": flow, "conditional": bool(self.conditional),
                "n_layers": _check_int(self.n_layers, "n_layers", 1), "hidden": tuple(int(h) for h in hidden),
                "epochs": _check_int(self.epochs, "epochs", 1),
                "batch_size": _check_int(self.batch_size, "batch_size", 1), "lr": float(lr),
                "validation_fraction": float(fraction),
                "patience": _check_int(self.patience, "patience", 1, allow_none=True), "dtype": dtype,
                "lr_schedule": self.lr_schedule, "average": self._average()}

    def _average(self):
        from .train._average import check_average
        try:
            return check_average(self.average, "FlowDensity") or None
        except TypeError as exc:       # every constructor parameter is refused in fit with a ValueError
            raise ValueError(str(exc)) from None

    # ------------------------------------------------------------------ model files
    @staticmethod
    def _json_params(params):
        """Constructor parameters as JSON values (a Generator seed cannot be stored: it becomes None)."""
        out = dict(params)
        out["hidden"] = list(out["hidden"]) if isinstance(out["hidden"], (tuple, list)) else out["hidden"]
        try:
            out["dtype"] = np.dtype(out["dtype"]).name
        except TypeError:
            pass
        rs = out["random_state"]
        out["random_state"] = int(rs) if isinstance(rs, numbers.Integral) and not isinstance(rs, bool) else None
        for key in ("n_layers", "epochs", "batch_size", "patience"):
            if isinstance(out[key], numbers.Integral):
                out[key] = int(out[key])
        for key in ("lr", "validation_fraction", "contamination", "average"):
            if isinstance(out.get(key), numbers.Real) and not isinstance(out[key], (bool, np.bool_)):
                out[key] = float(out[key])
        if isinstance(out.get("conditional"), np.bool_):
            out["conditional"] = bool(out["conditional"])
        return out

    @classmethod
    def _params_from_json(cls, params):
        if not isinstance(params, dict):
            raise TypeError(f"estimator params must be an object; got {type(params).__name__}")
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} parameters {unknown}")
        out = dict(params)
        if isinstance(out.get("hidden"), list):
            out["hidden"] = tuple(out["hidden"])
        return out
