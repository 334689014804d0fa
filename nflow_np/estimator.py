"""``FlowDensity``: a normalizing-flow density estimator with scikit-learn's interface.

It follows scikit-learn's estimator contract (``get_params``/``set_params``,
``fit``/``score_samples``/``score``/``sample``, fitted attributes ending in
``_``, ``n_features_in_``) without importing scikit-learn: the parameter
introspection is done here, as ``sklearn.base.BaseEstimator`` does it, so
``clone``, ``GridSearchCV`` and ``check_estimator`` work when scikit-learn is
installed, and nothing needs it when it is not.
"""

import sys

import numpy as np

from ._estimator_checks import _as_generator, _check_int, _checked_array, _column_moments, _context_rows, \
    _finite_moments, _is_seed, _merge_histories, _standardized
from ._estimator_base import _ParamsMixin
from ._estimator_flows import FLOWS, build_flow
from ._validation import check_sample_count, is_dask_array

__all__ = ["FlowDensity", "FlowOutlierDetector", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted estimator is called before ``fit``.

    A ``ValueError`` and an ``AttributeError``, like scikit-learn's own
    ``NotFittedError``, so that code catching either works.
    """


_SKLEARN_NOT_FITTED = {}


def _not_fitted_error():
    """:class:`NotFittedError`, or, once scikit-learn is imported, a subclass of it that is also scikit-learn's
    ``NotFittedError`` (which its checks and ``check_is_fitted`` users catch); nothing imports scikit-learn here."""
    exceptions = sys.modules.get("sklearn.exceptions")
    if exceptions is None:
        return NotFittedError
    if "class" not in _SKLEARN_NOT_FITTED:
        _SKLEARN_NOT_FITTED["class"] = type("NotFittedError", (NotFittedError, exceptions.NotFittedError),
                                            {"__module__": __name__, "__doc__": NotFittedError.__doc__})
    return _SKLEARN_NOT_FITTED["class"]


class FlowDensity(_ParamsMixin):
    """Density estimation with a normalizing flow, in scikit-learn's style (like ``KernelDensity``).

    ``fit`` standardizes each column of ``X`` (mean 0, standard deviation 1),
    fits a flow to the standardized data by maximum likelihood, and accounts
    for the standardization in every density: ``log p(x) = log q((x - mean_) /
    scale_) - sum(log scale_)``.

    With ``conditional=True`` it learns a conditional density p(x | y):
    ``fit(X, y)`` takes a context row ``y_i`` per sample, standardized like
    ``X`` (``context_mean_``, ``context_scale_``; a context is only
    conditioned on, so its standardization adds no Jacobian term), and every
    coupling or autoregressive layer of the flow is conditioned on it:
    ``log p(x | y) = log q((x - mean_) / scale_ | (y - context_mean_) /
    context_scale_) - sum(log scale_)``. Then ``score_samples(X, y)``,
    ``score(X, y)`` and ``sample(n, y=...)`` take the context too. A
    categorical context is given one-hot encoded (one 0/1 column per
    category, e.g. ``sklearn.preprocessing.OneHotEncoder``): integer codes
    would be read as a number, with category 3 "between" 2 and 4.

    Parameters
    ----------
    flow : str, default "realnvp"
        Which of :mod:`nflow_np.flows` to fit: "realnvp", "nice", "maf",
        "iaf", "nsf", "naf", "bnaf", "planar", "radial" or "ncsf" (the table
        ``nflow_np._estimator_flows.FLOWS``; the names are not case
        sensitive). The coupling flows ("realnvp", "nice") need at least 2
        features; the others also fit 1-D data.
        "nsf" is a neural spline flow (8 bins on [-5, 5] of the standardized
        data): spline couplings, or one autoregressive spline layer stack
        for 1-D data.
        "iaf" evaluates densities with one network call per feature, so it is
        slow to train on data. "planar" and "radial" (Rezende and Mohamed's
        residual layers, made for variational inference) have no networks:
        ``hidden`` is unused, and they cannot be conditional; a planar
        layer's density solves one scalar equation per layer.
        "naf" (deep sigmoidal autoregressive layers) and "bnaf" (block
        neural autoregressive layers; ``hidden`` unused, not conditional)
        sample by solving one scalar equation per feature and layer.
        "ncsf" is a density of angles on the torus [-pi, pi]^d (circular
        splines, a uniform base): the data are taken as they are, not
        standardized (``mean_`` 0, ``scale_`` 1), and must lie in
        [-pi, pi].
    n_layers : int, default 4
        Number of coupling, autoregressive (or planar, radial) layers.
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
    average : float in [0, 1) or None, default 0.99
        Polyak averaging (:func:`nflow_np.train.fit`'s ``average``): a moving
        average of the parameters, scored beside them at every validation; the
        better one competes for the kept epoch. Needs a validation part
        (``validation_fraction > 0``); None turns it off. On the quality
        suite it lowered held-out NLL by about 0.01-0.07 nats.
    conditional : bool, default False
        Learn p(x | y) from ``fit(X, y)`` (see above). False: ``y`` is ignored
        by ``fit`` and ``score``, as scikit-learn's density estimators do.

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
    context_mean_, context_scale_ : ndarray of shape (n_context,)
        The context's standardization (only with ``conditional=True``).
    n_context_in_ : int
        Number of context columns seen by ``fit`` (only with ``conditional=True``).

    References
    ----------
    Papamakarios, Nalisnick, Rezende, Mohamed and Lakshminarayanan, "Normalizing Flows for Probabilistic Modeling
    and Inference", JMLR 2021 (conditional flows: section 2.2).

    Examples
    --------
    >>> import numpy as np
    >>> from nflow_np.estimator import FlowDensity
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> est = FlowDensity(n_layers=2, hidden=(16,), epochs=5, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    >>> y = (X[:, 0] > 0).astype(float)          # a context: one 0/1 value per row
    >>> cond = FlowDensity(conditional=True, n_layers=2, hidden=(16,), epochs=5, random_state=0).fit(X, y)
    >>> cond.sample(4, y=1.0, random_state=0).shape
    (4, 2)
    """

    def __init__(self, flow="realnvp", n_layers=4, hidden=(64, 64), epochs=100, batch_size=256, lr=1e-3,
                 validation_fraction=0.1, patience=None, dtype="float64", random_state=None, lr_schedule=None,
                 conditional=False, average=0.99):
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
        self.conditional = conditional
        self.average = average

    def __sklearn_tags__(self):
        # Called by scikit-learn only, so scikit-learn is importable here; the package never imports it otherwise.
        from sklearn.utils import InputTags, Tags, TargetTags
        return Tags(estimator_type="density_estimator", target_tags=TargetTags(required=self.conditional is True),
                    input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False))

    def __sklearn_is_fitted__(self):
        return hasattr(self, "flow_")

    # ------------------------------------------------------------------ input validation
    def _check_X(self, X, method, reset):
        """``X`` as a finite 2-D float64 array (scikit-learn's ``validate_data`` conventions)."""
        arr = _checked_array(X, f"{type(self).__name__}.{method}")
        if not reset and arr.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return arr

    def _check_y(self, y, n_rows, method, reset):
        """The context of a conditional model as a finite ``(n_rows, k)`` float64 array; ``y`` of an
        unconditional one: None (``fit`` and ``score`` ignore it, as scikit-learn's density estimators do)."""
        if not (self.conditional is True if reset else self._is_conditional()):
            return None
        where = f"{type(self).__name__}.{method}"
        if y is None:
            raise ValueError(f"{where} requires y to be passed, but the target y is None: this model is "
                             f"conditional (conditional=True) and learns p(x | y); pass y, the context, one row per "
                             f"sample of X")
        arr = _checked_array(y, where, "y", allow_1d=True)
        if arr.shape[0] != n_rows:
            raise ValueError(f"{where}: y has {arr.shape[0]} row(s) but X has {n_rows}: one context row per sample")
        if not reset and arr.shape[1] != self.n_context_in_:
            raise ValueError(f"{where}: y has {arr.shape[1]} context column(s), but {type(self).__name__} was fitted "
                             f"with {self.n_context_in_}")
        return arr

    def _is_conditional(self):
        """Whether the fitted model conditions on ``y`` (unfitted: whether its parameters say it will)."""
        return hasattr(self, "context_mean_") if hasattr(self, "flow_") else self.conditional is True

    def _refuse_y(self, y, method):
        if y is not None:
            raise ValueError(f"{type(self).__name__}.{method}: this model is unconditional (fitted with "
                             f"conditional=False), so it takes no y; fit it with conditional=True to condition on y")

    def _standardized_context(self, Y, method):
        if Y is None:
            return None
        return _standardized(Y, self.context_mean_, self.context_scale_,
                             f"{type(self).__name__}.{method} (y)").astype(self.flow_.dtype)

    def _check_fitted(self, method):
        if not hasattr(self, "flow_"):
            raise _not_fitted_error()(f"This {type(self).__name__} instance is not fitted yet; call 'fit' with "
                                      f"appropriate arguments before using '{method}'.")

    # ------------------------------------------------------------------ fitting
    def _build_flow(self, params, n_features, rng, n_context=0):
        return build_flow(params["flow"], n_features, n_layers=params["n_layers"], hidden=params["hidden"],
                          context=n_context, rng=rng, dtype=params["dtype"], where="FlowDensity")

    def fit(self, X, y=None):
        """Fit the flow to ``X`` by maximum likelihood.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            Finite real data; at least 2 samples.
        y : array_like of shape (n_samples,) or (n_samples, n_context), optional
            With ``conditional=True``, the context of each sample (required,
            finite; categories one-hot encoded). Ignored otherwise, as by
            scikit-learn's density estimators.

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
        self._fit(X, y)
        return self

    def _fit(self, X, y=None, *, callback=None, resume=False, catch_interrupt=False, reset_lr=False):
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
            if params["conditional"] != self._is_conditional():
                kind = "a conditional" if self._is_conditional() else "an unconditional"
                raise ValueError(f"FlowDensity.fit: cannot resume {kind} flow with conditional={self.conditional!r}")
            Y = self._check_y(y, X.shape[0], "fit", reset=False)
            context = None if Y is None else (self.context_mean_, self.context_scale_)
            previous = getattr(self, "history_", None)
            saved = getattr(self, "optimizer_state_", None)
            if seeded:
                # the draws of the first fit's initial weights, so that the split and shuffles below repeat its own
                self._build_flow(params, X.shape[1], rng, flow.context_size)
        else:
            X = self._check_X(X, "fit", reset=True)
            if X.shape[0] < 2:
                raise ValueError(f"FlowDensity.fit: found {X.shape[0]} sample(s) (n_samples = 1) while a minimum "
                                 f"of 2 is required (standardization needs a spread)")
            mean, scale = self._standardization(X)
            if not FLOWS[params["flow"]].standardize:
                mean, scale = np.zeros_like(mean), np.ones_like(scale)
            Y = self._check_y(y, X.shape[0], "fit", reset=True)
            context = None if Y is None else self._standardization(Y)
            flow = self._build_flow(params, X.shape[1], rng, 0 if Y is None else Y.shape[1])
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
        C = None if Y is None else _standardized(Y, *context, "FlowDensity.fit (y)").astype(params["dtype"])
        fraction = params["validation_fraction"] if len(Z) >= 2 else 0.0
        Z_val = C_val = None
        if fraction:
            # the split nflow_np.train.fit would draw (the same calls on the same generator), made here so that a
            # resumed fit can skip the shuffles of the epochs already trained
            order = rng.permutation(len(Z))
            n_val = max(1, int(round(fraction * len(Z))))
            Z_val, Z = Z[order[:n_val]], Z[order[n_val:]]
            if C is not None:
                C_val, C = C[order[:n_val]], C[order[n_val:]]
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
                                lr_schedule=params["lr_schedule"], average=params["average"], context=C,
                                validation_context=C_val)
        except BaseException as exc:
            # train_fit has put the flow back to its best epoch so far (as it came when none was kept, which on
            # resume is the fitted flow itself), in evaluation mode: keep that fit, then let the exception go on
            history = state["history"]
            kept = history is not None and history.best_epoch >= 0
            if kept:
                history.stopped_early = True
                self._keep(flow, mean, scale, previous, history, state["optimizer"], context, (X, Y))
            if catch_interrupt and isinstance(exc, KeyboardInterrupt) and (kept or resume):
                return True
            raise
        self._keep(flow, mean, scale, previous, history,
                   state["optimizer"] if history.best_epoch >= 0 else optimizer.state_dict(), context, (X, Y))
        return False

    def _keep(self, flow, mean, scale, previous, history, optimizer_state, context, data):
        """Set the fitted attributes from a fit (after ``previous``, on resume) on ``data``, the checked ``(X, Y)``."""
        if not _finite_moments(optimizer_state):
            # a finite gradient whose square overflows (float32, on the compiled paths) leaves an infinite second
            # moment: a state that neither loads back nor goes in a model file, so a resume starts a fresh Adam
            optimizer_state = None
        self._set_fitted(flow, mean, scale, _merge_histories(previous, history), optimizer_state, context)
        self._fitted_on(*data)

    def _fitted_on(self, X, Y):
        """Called after every fit with its checked data (the outlier detector sets its threshold here)."""

    @staticmethod
    def _standardization(X):
        """Per-column mean and standard deviation of a checked 2-D float64 ``X`` (see :func:`_column_moments`)."""
        return _column_moments(X)

    def _set_fitted(self, flow, mean, scale, history, optimizer_state=None, context=None):
        """Set the fitted attributes; ``context``: the context's ``(mean, scale)``, None when unconditional."""
        if (context is None) != (flow.context_size == 0):
            raise ValueError(f"{type(self).__name__}: the flow's context size ({flow.context_size}) does not match "
                             f"the context standardization given ({'none' if context is None else len(context[0])})")
        if context is None:
            for name in ("context_mean_", "context_scale_", "n_context_in_"):
                self.__dict__.pop(name, None)
        else:
            self.context_mean_ = np.asarray(context[0], dtype=np.float64)
            self.context_scale_ = np.asarray(context[1], dtype=np.float64)
            if self.context_mean_.shape != (flow.context_size,) or self.context_scale_.shape != (flow.context_size,):
                raise ValueError(f"{type(self).__name__}: the context standardization must be {flow.context_size} "
                                 f"means and scales; got shapes {self.context_mean_.shape}, "
                                 f"{self.context_scale_.shape}")
            self.n_context_in_ = int(flow.context_size)
        self.flow_ = flow
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.scale_ = np.asarray(scale, dtype=np.float64)
        self.n_features_in_ = int(self.mean_.shape[0])
        self.history_ = history
        self.optimizer_state_ = optimizer_state
        # the log-Jacobian of the standardization, the same for every point
        self._log_scale_sum = float(np.log(self.scale_).sum())

    # ------------------------------------------------------------------ densities and samples
    def score_samples(self, X, y=None):
        """Log-density of each row of ``X``, in the units of the data ``fit`` saw.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            With as many features as ``fit`` saw (``n_features_in_``).
        y : array_like of shape (n_samples,) or (n_samples, n_context), optional
            The context of each row: required by a conditional model (then
            ``log p(x | y)``), refused by an unconditional one.

        Returns
        -------
        ndarray of shape (n_samples,), float64
            A lazy ``dask.array.Array`` when ``X`` is one (rows chunked, the features whole), one task per block:
            see :func:`nflow_np.dask.score_samples` (unconditional models only).
        """
        self._check_fitted("score_samples")
        return self._log_density(X, y, "score_samples")

    def _log_density(self, X, y, method):
        if is_dask_array(X):
            if self._is_conditional():
                raise ValueError(f"{type(self).__name__}.{method}: Dask arrays are scored for unconditional models "
                                 f"only; compute X and y first, or score block by block")
            self._refuse_y(y, method)
            from .dask import score_samples
            return score_samples(self, X)
        X = self._check_X(X, method, reset=False)
        if not self._is_conditional():
            self._refuse_y(y, method)
        Y = self._check_y(y, X.shape[0], method, reset=False)
        Z = ((X - self.mean_) / self.scale_).astype(self.flow_.dtype)
        C = self._standardized_context(Y, method)
        return self.flow_.log_prob(Z, context=C).astype(np.float64) - self._log_scale_sum

    def score(self, X, y=None):
        """Total log-likelihood of ``X`` (the sum of :meth:`score_samples`).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like, optional
            The context of each row for a conditional model (the total of
            ``log p(x_i | y_i)``); ignored by an unconditional one.

        Returns
        -------
        float
            A lazy 0-d ``dask.array.Array`` when ``X`` is a Dask array (``float()`` of it computes it).
        """
        self._check_fitted("score")
        if not self._is_conditional():
            y = None
        if is_dask_array(X) and y is None:
            from .dask import score
            return score(self, X)
        return float(np.sum(self._log_density(X, y, "score")))

    def sample(self, n_samples=1, random_state=None, y=None):
        """Draw points from the fitted density, in the units of the data.

        Parameters
        ----------
        n_samples : int, default 1
        random_state : int, numpy Generator, RandomState or None
            None draws fresh entropy (never NumPy's global state).
        y : array_like, optional
            For a conditional model (required): one context row for all the
            samples (shape ``(n_context_in_,)`` or ``(1, n_context_in_)``, a
            scalar with one context column), or one row per sample (shape
            ``(n_samples, n_context_in_)``, or ``(n_samples,)`` with one
            context column). Refused by an unconditional model.

        Returns
        -------
        ndarray of shape (n_samples, n_features), float64
        """
        self._check_fitted("sample")
        n = _check_int(n_samples, "n_samples", 0)
        where = f"{type(self).__name__}.sample"
        check_sample_count((n,), where, self.n_features_in_)
        rng = _as_generator(random_state, where)
        C = None
        if self._is_conditional():
            if y is None:
                raise ValueError(f"{where}: y is required: this model is conditional; pass the context, one row "
                                 f"for all samples or one row per sample")
            Y = _context_rows(y, n, self.n_context_in_, where)
            C = self._standardized_context(Y, "sample")
        else:
            self._refuse_y(y, "sample")
        Z = self.flow_.sample(n, rng=rng, context=C) if C is not None else self.flow_.sample(n, rng=rng)
        return Z.astype(np.float64) * self.scale_ + self.mean_


# the outlier detector is a FlowDensity with a threshold; defined in a module of its own, importable from here
from ._outliers import FlowOutlierDetector  # noqa: E402
