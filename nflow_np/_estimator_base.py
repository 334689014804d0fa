"""The parameter protocol of :class:`nflow_np.estimator.FlowDensity` and its subclasses: scikit-learn's
``get_params``/``set_params``/``repr``, done here as ``sklearn.base.BaseEstimator`` does it (without importing
scikit-learn), and the parameters as JSON values for model files."""

import inspect
import numbers

import numpy as np

from ._estimator_checks import _equal


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
        for key in ("lr", "validation_fraction", "contamination"):
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
