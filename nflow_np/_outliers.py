"""``FlowOutlierDetector``: novelty and outlier detection with a normalizing flow, scikit-learn's outlier-detector
contract (``decision_function``, ``predict`` returning +1 / -1, ``fit_predict``, ``offset_``, ``contamination``)."""

import math
import numbers

import numpy as np

from .estimator import FlowDensity

__all__ = ["FlowOutlierDetector", "AUTO_CONTAMINATION"]

AUTO_CONTAMINATION = 0.001
"""The fraction of the training points ``contamination="auto"`` puts below the threshold."""


class FlowOutlierDetector(FlowDensity):
    """Outlier and novelty detection by the log-density of a normalizing flow.

    A :class:`FlowDensity` (every parameter of it, ``conditional`` included)
    whose fitted density is cut at a threshold ``offset_``: a point is an
    outlier when its log-density lies below it,

    ``decision_function(x) = log p(x) - offset_``, negative for an outlier,
    ``predict(x) = +1`` (inlier) if ``decision_function(x) >= 0`` else ``-1``.

    ``offset_`` is the ``contamination``-quantile of the training points'
    log-densities (``numpy.quantile``, linear interpolation), as
    scikit-learn's ``EllipticEnvelope`` sets its threshold: with
    ``contamination=c``, a fraction ``c`` of the training points are outliers
    (ties aside). For novelty detection (clean training data, new points
    judged later) a small ``c`` sets how many clean points you accept to
    flag.

    ``contamination="auto"`` uses ``c = 0.001`` (:data:`AUTO_CONTAMINATION`):
    a log-density has no scale of its own (it moves by ``-sum(log scale)``
    when the data are rescaled, and grows with the dimension), so no fixed
    threshold such as ``IsolationForest``'s ``-0.5`` or
    ``LocalOutlierFactor``'s ``-1.5`` can mean the same on every data set;
    a quantile of the training scores can. 0.1% flags points rarer than any
    but the 1-in-1000 tail of the training data: a novelty detector's choice,
    not a guess at the contamination. Give the expected fraction of outliers
    when it is known.

    Parameters
    ----------
    flow, n_layers, hidden, epochs, batch_size, lr, validation_fraction, patience, dtype, random_state, \
lr_schedule, conditional, average
        As for :class:`FlowDensity`.
    contamination : "auto" or float in (0, 0.5], default "auto"
        The fraction of the training data taken to be outliers.

    Attributes
    ----------
    offset_ : float
        The threshold on the log-density (data units): ``decision_function =
        score_samples - offset_``.
    (and those of :class:`FlowDensity`)

    References
    ----------
    Papamakarios et al., "Normalizing Flows for Probabilistic Modeling and Inference", JMLR 2021; the
    quantile threshold as in Rousseeuw and Van Driessen, "A Fast Algorithm for the Minimum Covariance Determinant
    Estimator", Technometrics 1999 (scikit-learn's ``EllipticEnvelope``).

    Examples
    --------
    >>> import numpy as np
    >>> from nflow_np.estimator import FlowOutlierDetector
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> det = FlowOutlierDetector(contamination=0.02, n_layers=2, hidden=(16,), epochs=5, random_state=0).fit(X)
    >>> int((det.predict(X) == -1).sum())
    10
    >>> det.predict([[8.0, 8.0]])
    array([-1])
    """

    _estimator_type = "outlier_detector"

    def __init__(self, flow="realnvp", n_layers=4, hidden=(64, 64), epochs=100, batch_size=256, lr=1e-3,
                 validation_fraction=0.1, patience=None, dtype="float64", random_state=None, lr_schedule=None,
                 conditional=False, contamination="auto", average=0.99):
        super().__init__(flow=flow, n_layers=n_layers, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                         validation_fraction=validation_fraction, patience=patience, dtype=dtype,
                         random_state=random_state, lr_schedule=lr_schedule, conditional=conditional,
                         average=average)
        self.contamination = contamination

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "outlier_detector"
        return tags

    def _validated_params(self):
        params = super()._validated_params()
        params["contamination"] = self._quantile()
        return params

    def _quantile(self):
        c = self.contamination
        if isinstance(c, str) and c == "auto":
            return AUTO_CONTAMINATION
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not (math.isfinite(c) and
                                                                                     0.0 < c <= 0.5):
            raise ValueError(f"{type(self).__name__}: contamination must be 'auto' or a float in (0, 0.5]; got {c!r}")
        return float(c)

    def _fitted_on(self, X, Y):
        scores = self._log_density(X, Y, "fit")
        self.offset_ = float(np.quantile(scores, self._quantile()))

    def fit(self, X, y=None):
        """Fit the flow to ``X`` (given ``y`` when conditional) and set ``offset_`` from its training scores.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like, optional
            The context with ``conditional=True``; ignored otherwise.

        Returns
        -------
        FlowOutlierDetector
            ``self``, fitted.
        """
        return super().fit(X, y)

    def decision_function(self, X, y=None):
        """``score_samples(X, y) - offset_``: negative for outliers, the more negative the rarer.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like, optional
            The context of each row (a conditional model only).

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        return self._decision(X, y, "decision_function")

    def _decision(self, X, y, method):
        self._check_fitted(method)
        return np.asarray(self._log_density(X, y, method)) - self.offset_

    def predict(self, X, y=None):
        """+1 for an inlier, -1 for an outlier (``decision_function < 0``).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like, optional
            The context of each row (a conditional model only).

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        return np.where(self._decision(X, y, "predict") >= 0.0, 1, -1)

    def fit_predict(self, X, y=None):
        """``fit(X, y)`` then ``predict`` on the same points: the training outliers.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
        y : array_like, optional
            The context with ``conditional=True``; ignored otherwise.

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        self.fit(X, y)
        return self.predict(X, y if self._is_conditional() else None)
