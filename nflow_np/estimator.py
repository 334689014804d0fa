"""``FlowDensity``: a normalizing-flow density estimator with scikit-learn's interface.

It follows scikit-learn's estimator contract (``get_params``/``set_params``,
``fit``/``score_samples``/``score``/``sample``, fitted attributes ending in
``_``, ``n_features_in_``) without importing scikit-learn: the parameter
introspection is done here, as ``sklearn.base.BaseEstimator`` does it, so
``clone``, ``GridSearchCV`` and ``check_estimator`` work when scikit-learn is
installed, and nothing needs it when it is not.
"""

import inspect
import math
import numbers

import numpy as np

from ._estimator_checks import _as_generator, _check_int, _column_moments, _equal, _finite_moments, _is_seed, \
    _is_sparse, _merge_histories, _standardized
from ._validation import check_sample_count, is_dask_array

__all__ = ["FlowDensity", "NotFittedError"]

_FLOWS = ("realnvp", "nice", "maf", "iaf", "nsf")
_COUPLING_FLOWS = ("realnvp", "nice")


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted estimator is called before ``fit``.

    A ``ValueError`` and an ``AttributeError``, like scikit-learn's own
    ``NotFittedError``, so that code catching either works.
    """


class FlowDensity:
    """Density estimation with a normalizing flow, in scikit-learn's style (like ``KernelDensity``).

    ``fit`` standardizes each column of ``X`` (mean 0, standard deviation 1),
    fits a flow to the standardized data by maximum likelihood, and accounts
    for the standardization in every density: ``log p(x) = log q((x - mean_) /
    scale_) - sum(log scale_)``.

    Parameters
    ----------
    flow : {"realnvp", "nice", "maf", "iaf", "nsf"}, default "realnvp"
        Which of :mod:`nflow_np.flows` to fit. The coupling flows ("realnvp",
        "nice") need at least 2 features; "maf" and "iaf" also fit 1-D data.
        "nsf" is a neural spline flow (8 bins on [-5, 5] of the standardized
        data): spline couplings, or one autoregressive spline layer stack
        for 1-D data.
        "iaf" evaluates densities with one network call per feature, so it is
        slow to train on data.
    n_layers : int, default 4
        Number of coupling or autoregressive layers.
    hidden : tuple of int, default (64, 64)
        Hidden widths of each layer's network.
    epochs : int, default 100
        Training epochs (passes over the training part of ``X``).
    batch_size : int, default 256
    lr : float, default 1e-3
        Learning rate of Adam.
    validation_fraction : float, default 0.1
        Fraction of ``X`` held out to pick the best epoch (and for early
        stopping); 0 trains on everything and keeps the last finite epoch.
    patience : int or None, default None
        Stop after this many epochs without a better validation loss.
    dtype : {"float64", "float32"}, default "float64"
        Computation dtype of the flow.
    random_state : int, numpy Generator, RandomState or None, default None
        Seeds the initial weights, the validation split and the shuffling.
    lr_schedule : {None, "cosine", "plateau"}, default None
        The learning rate over the epochs (:func:`nflow_np.train.fit`'s
        ``lr_schedule``): None keeps it constant, ``"cosine"`` decays it from
        ``lr`` to 0 by the last epoch, ``"plateau"`` halves it when the
        validation loss stalls. A resumed fit runs the schedule again over its
        own epochs. Constant is the default because it learns best at these
        budgets on the quality suite: a flow is still far from converged after
        100 epochs, and a decaying rate gives up progress (``cosine`` cost 0.07
        nats on two-moons and 0.24 on the 8-D mixture, ``benchmarks/quality.py``).

    Attributes
    ----------
    flow_ : TransformedDistribution
        The fitted flow, on standardized data.
    mean_, scale_ : ndarray of shape (n_features,)
        The standardization (a zero standard deviation is replaced by 1).
    history_ : nflow_np.train.History
        Training and validation losses (on standardized data) per epoch.
    optimizer_state_ : dict or None
        ``Adam.state_dict()`` (moments, step count, learning rate) as of the
        kept epoch, so that training can continue where it stopped (``nflow-np
        fit --resume``); saved in model files. None for a model loaded from a
        file written before optimizer state was saved, or when a moment
        overflowed to infinity (a resume then starts a fresh Adam).
    n_features_in_ : int
        Number of features (columns) seen by ``fit``; later calls must match it.

    Examples
    --------
    >>> import numpy as np
    >>> from nflow_np.estimator import FlowDensity
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> est = FlowDensity(n_layers=2, hidden=(16,), epochs=5, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    """

    def __init__(self, flow="realnvp", n_layers=4, hidden=(64, 64), epochs=100, batch_size=256, lr=1e-3,
                 validation_fraction=0.1, patience=None, dtype="float64", random_state=None, lr_schedule=None):
        # scikit-learn's contract: store the parameters untouched; fit validates them
        self.flow = flow
        self.n_layers = n_layers
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.dtype = dtype
        self.random_state = random_state
        self.lr_schedule = lr_schedule

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
                raise ValueError(f"FlowDensity.set_params: invalid parameter {name!r}; valid parameters are "
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

    def __sklearn_tags__(self):
        # Called by scikit-learn only, so scikit-learn is importable here; the package never imports it otherwise.
        from sklearn.utils import InputTags, Tags, TargetTags
        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=False),
                    input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False))

    def __sklearn_is_fitted__(self):
        return hasattr(self, "flow_")

    def _validated_params(self):
        """The parameters checked and normalized, or ``ValueError`` naming the bad one."""
        flow = self.flow
        if not isinstance(flow, str) or flow.lower() not in _FLOWS:
            raise ValueError(f"FlowDensity: flow must be one of {', '.join(map(repr, _FLOWS))}; got {flow!r}")
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
        return {"flow": flow.lower(), "n_layers": _check_int(self.n_layers, "n_layers", 1),
                "hidden": tuple(int(h) for h in hidden), "epochs": _check_int(self.epochs, "epochs", 1),
                "batch_size": _check_int(self.batch_size, "batch_size", 1), "lr": float(lr),
                "validation_fraction": float(fraction),
                "patience": _check_int(self.patience, "patience", 1, allow_none=True), "dtype": dtype,
                "lr_schedule": self.lr_schedule}

    # ------------------------------------------------------------------ input validation
    def _check_X(self, X, method, reset):
        """``X`` as a finite 2-D float64 array (scikit-learn's ``validate_data`` conventions)."""
        where = f"FlowDensity.{method}"
        if _is_sparse(X):
            raise TypeError(f"{where}: sparse input is not supported (a flow needs dense data); "
                            f"convert it with X.toarray()")
        arr = np.asarray(X)
        if arr.dtype.kind == "c":
            raise ValueError(f"{where}: Complex data not supported; got {arr.dtype}")
        if arr.dtype.kind not in "fiub":
            # strings or objects: float() explains what cannot be converted, after which method and argument
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{where}: X must hold numbers; {exc}") from None
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"{where}: Expected 2D array, got {arr.ndim}D array instead (shape {arr.shape}). "
                             f"Reshape your data either using X.reshape(-1, 1) if your data has a single feature "
                             f"or X.reshape(1, -1) if it contains a single sample.")
        n, d = arr.shape
        if d == 0:
            raise ValueError(f"{where}: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
        if n == 0:
            raise ValueError(f"{where}: 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
        finite = np.isfinite(arr)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise ValueError(f"{where}: Input X contains NaN or infinity ({arr[row, col]} at row {row}, column "
                             f"{col}); a density is defined only at finite points")
        if not reset and d != self.n_features_in_:
            raise ValueError(f"X has {d} features, but FlowDensity is expecting {self.n_features_in_} features "
                             f"as input.")
        return arr

    def _check_fitted(self, method):
        if not hasattr(self, "flow_"):
            raise NotFittedError(f"This FlowDensity instance is not fitted yet; call 'fit' with appropriate "
                                 f"arguments before using '{method}'.")

    # ------------------------------------------------------------------ fitting
    def _build_flow(self, params, n_features, rng):
        from . import flows
        kind = params["flow"]
        if kind in _COUPLING_FLOWS and n_features < 2:
            raise ValueError(f"FlowDensity: flow={kind!r} is a coupling flow (one half of the features "
                             f"conditions the other) and needs at least 2 features; got {n_features} feature(s) "
                             f"(n_features = {n_features}). Use flow='maf' for 1-D data.")
        builder = {"realnvp": flows.RealNVP, "nice": flows.NICE, "maf": flows.MAF, "iaf": flows.IAF,
                   "nsf": flows.NSF}[kind]
        extra = {"autoregressive": n_features < 2} if kind == "nsf" else {}
        return builder(n_features, n_layers=params["n_layers"], hidden=params["hidden"], rng=rng,
                       dtype=params["dtype"], **extra)

    def fit(self, X, y=None):
        """Fit the flow to ``X`` by maximum likelihood.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Finite real data; at least 2 samples.
        y : None
            Ignored; present for scikit-learn's API.

        Returns
        -------
        FlowDensity
            ``self``, fitted.

        Notes
        -----
        Interrupted (Ctrl-C, or any exception during training) after at
        least one epoch, the estimator is left fitted with the best epoch so
        far (``history_.stopped_early`` set) before the exception propagates.
        """
        self._fit(X)
        return self

    def _fit(self, X, *, callback=None, resume=False, catch_interrupt=False, reset_lr=False):
        """``fit`` with the command line's extras.

        ``callback(epoch, history)`` runs after every epoch (as in
        :func:`nflow_np.train.fit`). ``resume`` continues training the fitted
        flow with the stored standardization, and continues its Adam from
        ``optimizer_state_`` (moments, step count and learning rate; a fresh
        Adam when there is none, as for a model file written before optimizer
        state was saved); ``reset_lr`` makes the resumed Adam continue at
        ``lr`` instead of its saved learning rate. With an int
        ``random_state``, a resumed fit draws the same validation split as the
        first fit and the shuffles an uninterrupted fit would have drawn next
        (given the same data), so that fitting E1 epochs, then resuming for
        E2, matches fitting E1 + E2 epochs at once. Whatever interrupts
        training (Ctrl-C, an exception), the estimator keeps the best epoch so
        far when one ended (a resume keeps the flow it had otherwise) and the
        exception propagates; ``catch_interrupt`` turns a ``KeyboardInterrupt``
        into a clean stop instead, unless nothing could be kept. Returns True
        when training was interrupted.
        """
        from .train import Adam
        from .train import fit as train_fit
        params = self._validated_params()
        rng = _as_generator(self.random_state, "FlowDensity.fit")
        seeded = _is_seed(self.random_state)
        if resume:
            self._check_fitted("fit(resume=True)")
            X = self._check_X(X, "fit", reset=False)
            mean, scale, flow = self.mean_, self.scale_, self.flow_
            if flow.dtype != params["dtype"]:
                raise ValueError(f"FlowDensity.fit: cannot resume a {flow.dtype} flow with dtype={self.dtype!r}")
            previous = getattr(self, "history_", None)
            saved = getattr(self, "optimizer_state_", None)
            if seeded:
                # the draws of the first fit's initial weights, so that the split and shuffles below repeat its own
                self._build_flow(params, X.shape[1], rng)
        else:
            X = self._check_X(X, "fit", reset=True)
            if X.shape[0] < 2:
                raise ValueError(f"FlowDensity.fit: found {X.shape[0]} sample(s) (n_samples = 1) while a minimum "
                                 f"of 2 is required (standardization needs a spread)")
            mean, scale = self._standardization(X)
            flow = self._build_flow(params, X.shape[1], rng)
            previous, saved = None, None
        optimizer = Adam(flow.parameters(), lr=params["lr"])
        if saved is not None:
            try:
                optimizer.load_state_dict(saved)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"FlowDensity.fit: cannot resume from optimizer_state_: {exc}") from None
            if reset_lr:
                optimizer.lr = params["lr"]
        Z = _standardized(X, mean, scale, "FlowDensity.fit").astype(params["dtype"])
        fraction = params["validation_fraction"] if len(Z) >= 2 else 0.0
        Z_val = None
        if fraction:
            # the split nflow_np.train.fit would draw (the same calls on the same generator), made here so that a
            # resumed fit can skip the shuffles of the epochs already trained
            order = rng.permutation(len(Z))
            n_val = max(1, int(round(fraction * len(Z))))
            Z_val, Z = Z[order[:n_val]], Z[order[n_val:]]
        if resume and seeded and previous is not None:
            for _ in range(previous.epochs):
                rng.permutation(len(Z))
        # the optimizer state that goes with the flow kept: the one of the best epoch so far (on resume, the one
        # loaded until an epoch ends)
        state = {"history": None, "optimizer": optimizer.state_dict()}

        def on_epoch(epoch, history):
            state["history"] = history
            if history.best_epoch == epoch:
                # the flow is restored to its best epoch at the end: keep the optimizer state of that epoch
                state["optimizer"] = optimizer.state_dict()
            return callback(epoch, history) if callback is not None else None

        try:
            history = train_fit(flow, Z, epochs=params["epochs"], batch_size=params["batch_size"], optimizer=optimizer,
                                validation_data=Z_val, patience=params["patience"], rng=rng, callback=on_epoch,
                                lr_schedule=params["lr_schedule"])
        except BaseException as exc:
            # train_fit has put the flow back to its best epoch so far (as it came when none was kept, which on
            # resume is the fitted flow itself), in evaluation mode: keep that fit, then let the exception go on
            history = state["history"]
            kept = history is not None and history.best_epoch >= 0
            if kept:
                history.stopped_early = True
                self._keep(flow, mean, scale, previous, history, state["optimizer"])
            if catch_interrupt and isinstance(exc, KeyboardInterrupt) and (kept or resume):
                return True
            raise
        self._keep(flow, mean, scale, previous, history,
                   state["optimizer"] if history.best_epoch >= 0 else optimizer.state_dict())
        return False

    def _keep(self, flow, mean, scale, previous, history, optimizer_state):
        """Set the fitted attributes from a fit (after ``previous``, on resume)."""
        if not _finite_moments(optimizer_state):
            # a finite gradient whose square overflows (float32, on the compiled paths) leaves an infinite second
            # moment: a state that neither loads back nor goes in a model file, so a resume starts a fresh Adam
            optimizer_state = None
        self._set_fitted(flow, mean, scale, _merge_histories(previous, history), optimizer_state)

    @staticmethod
    def _standardization(X):
        """Per-column mean and standard deviation of a checked 2-D float64 ``X`` (see :func:`_column_moments`)."""
        return _column_moments(X)

    def _set_fitted(self, flow, mean, scale, history, optimizer_state=None):
        self.flow_ = flow
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.scale_ = np.asarray(scale, dtype=np.float64)
        self.n_features_in_ = int(self.mean_.shape[0])
        self.history_ = history
        self.optimizer_state_ = optimizer_state
        # the log-Jacobian of the standardization, the same for every point
        self._log_scale_sum = float(np.log(self.scale_).sum())

    # ------------------------------------------------------------------ densities and samples
    def score_samples(self, X):
        """Log-density of each row of ``X``, in the units of the data ``fit`` saw.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            With as many features as ``fit`` saw (``n_features_in_``).

        Returns
        -------
        ndarray of shape (n_samples,), float64
            A lazy ``dask.array.Array`` when ``X`` is one (rows chunked, the features whole), one task per block:
            see :func:`nflow_np.dask.score_samples`.
        """
        self._check_fitted("score_samples")
        if is_dask_array(X):
            from .dask import score_samples
            return score_samples(self, X)
        X = self._check_X(X, "score_samples", reset=False)
        Z = ((X - self.mean_) / self.scale_).astype(self.flow_.dtype)
        return self.flow_.log_prob(Z).astype(np.float64) - self._log_scale_sum

    def score(self, X, y=None):
        """Total log-likelihood of ``X`` (the sum of :meth:`score_samples`).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
            A lazy 0-d ``dask.array.Array`` when ``X`` is a Dask array (``float()`` of it computes it).
        """
        if is_dask_array(X):
            self._check_fitted("score")
            from .dask import score
            return score(self, X)
        return float(np.sum(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw points from the fitted density, in the units of the data.

        Parameters
        ----------
        n_samples : int, default 1
        random_state : int, numpy Generator, RandomState or None
            None draws fresh entropy (never NumPy's global state).

        Returns
        -------
        ndarray of shape (n_samples, n_features), float64
        """
        self._check_fitted("sample")
        n = _check_int(n_samples, "n_samples", 0)
        check_sample_count((n,), "FlowDensity.sample", self.n_features_in_)
        rng = _as_generator(random_state, "FlowDensity.sample")
        Z = self.flow_.sample(n, rng=rng)
        return Z.astype(np.float64) * self.scale_ + self.mean_

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
        for key in ("lr", "validation_fraction"):
            if isinstance(out[key], numbers.Real):
                out[key] = float(out[key])
        return out

    @classmethod
    def _params_from_json(cls, params):
        if not isinstance(params, dict):
            raise TypeError(f"estimator params must be an object; got {type(params).__name__}")
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise ValueError(f"unknown FlowDensity parameters {unknown}")
        out = dict(params)
        if isinstance(out.get("hidden"), list):
            out["hidden"] = tuple(out["hidden"])
        return out
