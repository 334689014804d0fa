"""Pieces the ``nflow-np`` subcommands share: the user-facing error, loading a model, checking columns."""

import numpy as np

from . import io as model_io
from ._tables import check_file


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Interrupted(Exception):
    """Ctrl-C with nothing to keep: printed as one line, exit status 130."""


def _one_line(exc):
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------- models

def _load_model(path):
    check_file(path)
    try:
        return model_io.load(path)
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from None


def _as_sampler_and_scorer(model, path):
    """``(n_features, n_context, sample(n, seed, context), log_density(X, context))`` for an estimator or a flow;
    ``n_context`` is 0 for an unconditional model, whose functions take ``context=None``."""
    from .distributions import Distribution
    from .estimator import FlowDensity
    if isinstance(model, FlowDensity):
        def sample(n, seed, context=None):
            if context is None:
                return model.sample(n, random_state=seed)
            return model.sample(n, random_state=seed, y=context)

        def score(X, context=None):
            return model.score_samples(X) if context is None else model.score_samples(X, context)
        return model.n_features_in_, getattr(model, "n_context_in_", 0), sample, score
    if isinstance(model, Distribution) and len(model.event_shape) <= 1:
        d = model.event_shape[0] if model.event_shape else 1
        width = int(getattr(model, "context_size", 0) or 0)

        def sample(n, seed, context=None):
            extra = {} if context is None else {"context": context.astype(model.dtype)}
            return model.sample(n, rng=seed, **extra).reshape(n, d)

        def score(X, context=None):
            points = X.astype(model.dtype)
            extra = {} if context is None else {"context": context.astype(model.dtype)}
            return model.log_prob(points if model.event_shape else points[:, 0], **extra)
        return d, width, sample, score
    raise CLIError(f"{path}: holds a {type(model).__name__}, not a flow over vectors or a FlowDensity")


def _check_columns(X, n_features, data_path, model_path):
    if X.shape[1] != n_features:
        raise CLIError(f"{data_path} has {X.shape[1]} column(s), but the model in {model_path} takes "
                       f"{n_features} feature(s)")


def _offset(scale):
    """What standardization adds to a per-point NLL measured on standardized data."""
    return float(np.log(scale).sum())
