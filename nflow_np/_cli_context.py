"""The context of a conditional model on the command line, and ``nflow-np outliers``.

A conditional model (``nflow-np fit --context-columns``) learns p(x | context).
Its context travels in the data file's own columns (``--context-columns``:
the same columns as at ``fit``), or, for every row or point alike, as one row
of values (``--context 1,0,0``); ``sample`` also takes a file with one
context row per point (``--context-file``).
"""

import argparse
import sys

import numpy as np

from . import _cli_stream as stream
from ._cli_common import CLIError, _as_sampler_and_scorer, _check_columns, _load_model, _one_line

# ---------------------------------------------------------------------------- parsing


def parse_columns(text):
    """``--context-columns``: comma-separated column numbers (0 is the first, -1 the last)."""
    try:
        columns = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated column numbers like 2 or 2,3 (0 is the first "
                                         f"column); got {text!r}") from None
    if not columns:
        raise argparse.ArgumentTypeError(f"expected at least one column number; got {text!r}")
    return columns


def parse_values(text):
    """``--context``: one context row, comma-separated finite numbers."""
    try:
        values = np.array([float(v) for v in text.split(",") if v.strip()], dtype=np.float64)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,0,0 or 0.5; got {text!r}") from None
    if values.size == 0 or not np.isfinite(values).all():
        raise argparse.ArgumentTypeError(f"expected finite comma-separated numbers like 1,0,0 or 0.5; got {text!r}")
    return values


def split_columns(data, columns, path):
    """``(X, context)``: the columns of ``data`` that are not ``columns``, and those that are (None: no context)."""
    if columns is None:
        return data, None
    width = data.shape[1]
    picked = []
    for c in columns:
        if not -width <= c < width:
            raise CLIError(f"--context-columns: {path} has {width} column(s) (0 to {width - 1}); got column {c}")
        picked.append(c % width)
    if len(set(picked)) != len(picked):
        raise CLIError(f"--context-columns names a column twice: {','.join(map(str, columns))}")
    if len(picked) == width:
        raise CLIError(f"--context-columns takes every column of {path}; at least one must remain as data")
    rest = [c for c in range(width) if c not in picked]
    return data[:, rest], data[:, picked]


def add_context_options(p, what):
    """``--context-columns`` and ``--context`` (exclusive) on the subcommand parser ``p``."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--context-columns", type=parse_columns, default=None, metavar="COLS",
                       help=f"for a conditional model: the columns of DATA that hold the context, comma-separated, "
                            f"0 the first (as given to 'fit'); the other columns are the points {what}")
    group.add_argument("--context", type=parse_values, default=None, metavar="VALUES",
                       help=f"for a conditional model: one context row for every point {what}, comma-separated "
                            f"(e.g. 1,0,0 for the first of three one-hot categories)")


def add_backend_option(p):
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default=None,
                   help="compute backend (default: nflow_np.get_backend(), Numba when it imports)")


def backend_of(args):
    """The ``with`` context of ``--backend`` (a no-op without it)."""
    from contextlib import nullcontext

    from . import backend
    return nullcontext() if getattr(args, "backend", None) is None else backend(args.backend)


def _check_context(context, width, where, model_path):
    if width == 0 and context is not None:
        raise CLIError(f"{model_path}: the model is unconditional, so it takes no context ({where})")
    if width and context is not None and context.shape[-1] != width:
        raise CLIError(f"{where}: the model in {model_path} takes a context of {width} column(s); got "
                       f"{context.shape[-1]}")


def _missing_context(width, model_path, file_option=False):
    also = ", --context-file FILE" if file_option else ""
    return CLIError(f"{model_path}: the model is conditional on {width} context column(s); give --context-columns "
                    f"(which columns of DATA hold it){also} or --context V1,...,V{width}")


def scored_chunks(model, args):
    """``(X, log-densities)`` per chunk of ``args.data``, each row scored with its context."""
    n_features, width, _, score = _as_sampler_and_scorer(model, args.model)
    if width and args.context_columns is None and args.context is None:
        raise _missing_context(width, args.model)
    for chunk in stream.read_chunks(args.data, stream.CHUNK_ROWS):
        X, context = split_columns(chunk, args.context_columns, args.data)
        _check_context(context, width, f"{args.data} --context-columns", args.model)
        _check_columns(X, n_features, args.data + (" (less its context columns)" if context is not None else ""),
                       args.model)
        if args.context is not None:
            _check_context(args.context, width, "--context", args.model)
            context = np.broadcast_to(args.context, (len(X), width))
        yield X, score(X, context)


def sample_context(args, width):
    """The context of ``sample``: None, one row, or one row per point (``--context-file``); and the point count."""
    if width == 0:
        if args.context is not None or args.context_file is not None:
            raise CLIError(f"{args.model}: the model is unconditional, so it takes no context")
        return None, 1000 if args.n is None else args.n
    if args.context_file is not None:
        from ._tables import read_data
        rows = read_data(args.context_file)
        _check_context(rows, width, args.context_file, args.model)
        if args.n is not None and args.n != len(rows):
            raise CLIError(f"-n {args.n} differs from the {len(rows)} row(s) of --context-file {args.context_file} "
                           f"(one point is drawn per row; leave -n out)")
        return rows, len(rows)
    if args.context is None:
        raise _missing_context(width, args.model, file_option=True)
    _check_context(args.context, width, "--context", args.model)
    return args.context, 1000 if args.n is None else args.n


# ---------------------------------------------------------------------------- nflow-np outliers

def cmd_outliers(args):
    """Label each row of DATA +1 (inlier) or -1 (outlier) by its log-density under MODEL."""
    model = _load_model(args.model)
    contamination = args.contamination
    if contamination is not None and not 0.0 < contamination <= 0.5:
        raise CLIError(f"--contamination must lie in (0, 0.5]; got {contamination}")
    offset = getattr(model, "offset_", None)
    if contamination is None and offset is None:
        raise CLIError(f"{args.model}: the model holds no outlier threshold; give --contamination (the fraction of "
                       f"DATA to flag), or fit the model with 'nflow-np fit --contamination'")
    with backend_of(args):
        try:
            scores = [s for _, s in scored_chunks(model, args)]
        except ValueError as exc:
            text = _one_line(exc)
            raise CLIError(text if text.startswith(args.data) else f"{args.data}: {text}") from None
    scores = np.concatenate(scores).astype(np.float64)
    if contamination is not None:
        offset = float(np.quantile(scores, contamination))
    labels = np.where(scores >= offset, 1.0, -1.0)
    rows = np.stack([labels, scores, scores - offset], axis=1)
    stream.write_chunks((rows[i:i + stream.CHUNK_ROWS] for i in range(0, len(rows), stream.CHUNK_ROWS)), args.out,
                        "outlier")
    flagged = int((labels < 0).sum())
    source = f"the {contamination:g} quantile of these rows" if contamination is not None else \
        "the model's threshold"
    print(f"{flagged} of {len(labels)} row(s) flagged as outliers (log-density below {offset:.6g}, {source})",
          file=sys.stderr)
    return 0


def add_outliers_parser(command):
    p = command("outliers", "label each row of a data file inlier (+1) or outlier (-1) by its log-density under a "
                            "model", cmd_outliers)
    p.add_argument("model", help="model file (.npz): a FlowDensity, or one fitted with 'fit --contamination' (which "
                                 "holds its own threshold)")
    p.add_argument("data", help="DATA.csv, DATA.npy or DATA.parquet")
    p.add_argument("--contamination", type=float, default=None,
                   help="the fraction of DATA to flag, in (0, 0.5]: the threshold is that quantile of DATA's "
                        "log-densities (default: the threshold the model was fitted with)")
    add_context_options(p, "of DATA")
    p.add_argument("--out", default="-", help="file to write, one row per row of DATA: label (+1 inlier, -1 "
                                              "outlier), log-density, and log-density minus the threshold "
                                              "(negative for an outlier); .npy, .parquet, else CSV; - for stdout")
    add_backend_option(p)
    return p
