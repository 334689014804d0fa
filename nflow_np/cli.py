"""The ``nflow-np`` command: train, sample, score and inspect flows from the shell.

Subcommands: ``demo``, ``fit``, ``sample``, ``logprob``, ``outliers``, ``info``; run
``nflow-np <command> --help`` for each. Bad input (a missing file, a ragged or
non-numeric CSV, NaN rows, a column count the model does not take, a damaged
model file) ends with one line on stderr, ``nflow-np: error: ...``, and exit
status 2, never a traceback.
"""

import argparse
import os
import sys
import time

import numpy as np

from . import io as model_io
from . import _cli_context as context_cli
from . import _cli_stream as stream
from ._cli_common import CLIError, _Interrupted, _as_sampler_and_scorer, _check_columns, _load_model, _offset, \
    _one_line
from ._cli_info import cmd_info
from ._estimator_flows import flow_names
from ._tables import read_data

__all__ = ["main"]

PROG = "nflow-np"


# ---------------------------------------------------------------------------- progress

def report_epoch(stream, line):
    """Write one progress line; a function of its own, so that tests can simulate Ctrl-C here.

    Parameters
    ----------
    stream : text stream
    line : str

    Returns
    -------
    None
    """
    stream.write(line)
    stream.flush()


class _Progress:
    """Per-epoch progress: one log line per epoch, or an updating bar (``bar=True``)."""

    def __init__(self, epochs, offset, *, bar=False, stream=None, quiet=False):
        self.epochs, self.offset, self.bar, self.quiet = epochs, offset, bar, quiet
        self.stream = sys.stderr if stream is None else stream
        self.last_time, self.last_steps = time.perf_counter(), 0

    def __call__(self, epoch, history):
        now = time.perf_counter()
        rate = (history.steps - self.last_steps) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_steps = now, history.steps
        if self.quiet:
            return None
        train = history.train_loss[-1] + self.offset
        val = f"  val NLL {history.val_loss[-1] + self.offset:.4f}" if history.val_loss else ""
        text = f"epoch {epoch + 1}/{self.epochs}  train NLL {train:.4f}{val}  {rate:.0f} steps/s"
        if self.bar:
            width = 24
            filled = int(round(width * (epoch + 1) / self.epochs))
            report_epoch(self.stream, f"\r[{'#' * filled}{'.' * (width - filled)}] {text}")
        else:
            report_epoch(self.stream, text + "\n")
        return None

    def close(self):
        if self.bar and not self.quiet:
            self.stream.write("\n")


def _train(estimator, X, progress, *, resume=False, reset_lr=False, context=None):
    try:
        interrupted = estimator._fit(X, context, callback=progress, resume=resume, catch_interrupt=True,
                                     reset_lr=reset_lr)
    except KeyboardInterrupt:
        progress.close()
        raise _Interrupted("interrupted before the first epoch finished; nothing saved") from None
    progress.close()
    if interrupted:
        history = estimator.history_
        best = f"epoch {history.best_epoch + 1}" if history is not None and history.best_epoch >= 0 else "the model"
        print(f"interrupted: keeping the best model so far ({best})", file=sys.stderr)
    return interrupted


def _save(model, path):
    try:
        model_io.save(model, path)
    except OSError as exc:
        raise CLIError(f"{path}: cannot write the model ({exc.strerror or exc})") from None


def _summary(estimator):
    history = estimator.history_
    if history is None or history.best_epoch < 0:
        return "no finite epoch"
    offset = _offset(estimator.scale_)
    losses = history.val_loss if history.val_loss else history.train_loss
    which = "validation" if history.val_loss else "train"
    return (f"best epoch {history.best_epoch + 1} of {history.epochs}, {which} NLL "
            f"{losses[history.best_epoch] + offset:.4f}")


# ---------------------------------------------------------------------------- commands

def _parse_hidden(text):
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 64,64; got {text!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 64,64; got {text!r}")
    return widths


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}")
    return value


def _contamination(text):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5]; got {text!r}") from None
    if not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5]; got {text!r}")
    return value


def _cmd_fit(args):
    from .estimator import FlowDensity, FlowOutlierDetector
    X, context = context_cli.split_columns(read_data(args.data), args.context_columns, args.data)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "random_state": args.seed,
                "validation_fraction": args.validation_fraction, "patience": args.patience}
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.contamination is not None:
        settings["contamination"] = args.contamination
    if args.resume:
        estimator = _load_model(args.out)
        if not isinstance(estimator, FlowDensity):
            raise CLIError(f"{args.out}: --resume needs a model written by 'nflow-np fit'; this file holds a "
                           f"{type(estimator).__name__}")
        if args.contamination is not None and not isinstance(estimator, FlowOutlierDetector):
            raise CLIError(f"{args.out}: --contamination cannot be added on --resume: the model was fitted without "
                           f"it (fit a new model with --contamination)")
        width = getattr(estimator, "n_context_in_", 0)
        if (context is None) != (width == 0) or context is not None and context.shape[1] != width:
            kind = f"conditional on {width} context column(s)" if width else "unconditional"
            raise CLIError(f"{args.out}: the model is {kind}; --context-columns must name "
                           f"{'as many columns' if width else 'none'} on --resume")
        _check_columns(X, estimator.n_features_in_, args.data, args.out)
        estimator.set_params(**settings)
        offset = _offset(estimator.scale_)
    else:
        cls = FlowOutlierDetector if args.contamination is not None else FlowDensity
        estimator = cls(flow=args.flow, n_layers=args.layers, hidden=args.hidden, dtype=args.dtype,
                        conditional=context is not None, **settings)
        estimator._validated_params()
        if X.shape[0] < 2:
            raise CLIError(f"{args.data}: needs at least 2 rows to fit; got {X.shape[0]}")
        offset = _offset(FlowDensity._standardization(X)[1])
    progress = _Progress(args.epochs, offset, quiet=args.quiet)
    # on --resume, Adam continues at its saved learning rate unless --lr names another
    with context_cli.backend_of(args):
        interrupted = _train(estimator, X, progress, resume=args.resume, reset_lr=args.lr is not None,
                             context=context)
    _save(estimator, args.out)
    extra = f", conditional on {estimator.n_context_in_} context column(s)" if context is not None else ""
    if hasattr(estimator, "offset_"):
        extra += f", outlier threshold {estimator.offset_:.6g}"
    print(f"saved {args.out}: {estimator.flow}, {estimator.n_layers} layers, {estimator.n_features_in_} "
          f"feature(s){extra}; {_summary(estimator)}")
    # the model is saved either way; the status still tells a script that training was cut short
    return 130 if interrupted else 0


_SAMPLE_CHUNK = 65536
"""Points drawn and written at a time by ``sample``, so that its memory does not grow with ``-n``."""


def _cmd_sample(args):
    model = _load_model(args.model)
    if args.n is not None and args.n < 0:
        raise CLIError(f"-n must be non-negative; got {args.n}")
    _, width, sample, _ = _as_sampler_and_scorer(model, args.model)
    context, n = context_cli.sample_context(args, width)
    if args.scheduler:
        if context is not None:
            raise CLIError("--scheduler draws from unconditional models only; sample a conditional one without it")
        from .distributions import Distribution
        if isinstance(model, Distribution) and not hasattr(model, "bijector"):
            raise CLIError(f"{args.model}: --scheduler samples flows and FlowDensity models; this is a "
                           f"{type(model).__name__}")
        with stream.connect(args.scheduler) as client:
            stream.write_chunks(stream.sample_on_cluster(client, args.model, n, args.seed, _SAMPLE_CHUNK),
                                args.out)
        return 0
    # one generator for every chunk: its stream, and so the points, do not depend on the chunk size
    rng = np.random.default_rng(args.seed)

    def chunks():
        for start in range(0, n, _SAMPLE_CHUNK):
            size = min(_SAMPLE_CHUNK, n - start)
            if context is None:
                yield sample(size, rng)
            else:
                rows = context if context.ndim == 1 else context[start:start + size]
                yield sample(size, rng, np.broadcast_to(rows, (size, width)))
    with context_cli.backend_of(args):
        stream.write_chunks(chunks(), args.out)
    return 0


def _cmd_logprob(args):
    model = _load_model(args.model)
    n_features, width, _, _ = _as_sampler_and_scorer(model, args.model)

    def checked():
        for X in stream.read_chunks(args.data, stream.CHUNK_ROWS):
            _check_columns(X, n_features, args.data, args.model)
            yield X
    try:
        if args.scheduler:
            if width or args.context is not None or args.context_columns is not None:
                raise CLIError("--scheduler scores unconditional models only; score a conditional one without it")
            with stream.connect(args.scheduler) as client:
                stream.write_chunks(stream.score_on_cluster(client, args.model, checked()), args.out, "log_prob",
                                    flat=True)
        else:
            with context_cli.backend_of(args):
                stream.write_chunks((scores for _, scores in context_cli.scored_chunks(model, args)), args.out,
                                    "log_prob", flat=True)
    except ValueError as exc:
        text = _one_line(exc)
        raise CLIError(text if text.startswith(args.data) or text.startswith(args.out) else
                       f"{args.data}: {text}") from None
    return 0


def _figure(estimator, data, path, dataset):
    """Data, samples and the learned density side by side; returns a note when matplotlib is missing."""
    samples = estimator.sample(len(data), random_state=1)
    low, high = np.quantile(data, [0.001, 0.999], axis=0)
    pad = 0.15 * (high - low)
    bounds = ((low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1]))
    try:
        import matplotlib  # noqa: F401  (only to learn whether it is there)
        from .plot import plot_density, plot_samples
    except ImportError:
        from ._png import panels_png
        panels_png(path, data, samples, estimator.score_samples, bounds)
        return (f"saved {path} (data | samples | density, drawn without matplotlib; "
                f"pip install nflow_np[plot] for the full figure)")
    from matplotlib.figure import Figure
    # a bare Figure draws without pyplot, so no GUI backend is needed
    fig = Figure(figsize=(14.0, 4.2))
    axes = fig.subplots(1, 3)
    plot_samples(data, samples, ax=axes[:2])
    plot_density(estimator.score_samples, bounds, ax=axes[2], grid=150)
    axes[2].set_title("learned density")
    for ax in axes:
        # one window for all three panels, so that they compare at a glance
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
    fig.suptitle(f"{dataset}: a neural spline flow fitted with nflow_np")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return None


# The demo's model and budget, chosen by measurement: a spline coupling flow learns the toys best at a given budget
# (benchmarks/quality.py), float32 halves its time, 20,000 training points keep the generalization gap small, and a
# cosine-decayed rate from 3e-3 converges where a constant 1e-3 wanders (best epochs 12-25 of 40). On two-moons:
# 0.013 nats above the entropy for seeds 0 and 1 (0.022-0.029 at a constant 1e-3).
DEMO_MODEL = dict(flow="nsf", n_layers=4, hidden=(64, 64), batch_size=256, lr=3e-3, dtype="float32",
                  lr_schedule="cosine")
DEMO_TEST_POINTS = 20_000


def _cmd_demo(args):
    from . import datasets
    from .estimator import FlowDensity
    try:
        name = datasets._canonical(args.dataset, "demo")
    except ValueError as exc:
        raise CLIError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(sorted(datasets.DATASETS))}") \
            from exc
    rng = np.random.default_rng(args.seed)
    train = datasets.load(name, args.n, rng=rng)
    test = datasets.load(name, DEMO_TEST_POINTS, rng=rng)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{args.out}: cannot create the output directory ({exc.strerror or exc})") from None
    estimator = FlowDensity(epochs=args.epochs, random_state=args.seed, **DEMO_MODEL)
    print(f"training a neural spline flow ({DEMO_MODEL['n_layers']} spline couplings) on {args.n} points of {name}",
          file=sys.stderr)
    progress = _Progress(args.epochs, _offset(FlowDensity._standardization(train)[1]), bar=True)
    interrupted = _train(estimator, train, progress)
    nll = -estimator.score(test) / len(test)
    line = f"held-out NLL: {nll:.4f} nats per point ({len(test)} fresh points of {name})"
    if name in datasets.LOG_PROBS:
        entropy = datasets.true_entropy(name)
        line += f"; the data's entropy (the best possible): {entropy:.4f}, gap {nll - entropy:.4f}"
    print(line)
    model_path = os.path.join(args.out, "model.npz")
    _save(estimator, model_path)
    print(f"saved {model_path}")
    figure_path = os.path.join(args.out, f"{name}.png")
    note = _figure(estimator, train, figure_path, name)
    print(note if note else f"saved {figure_path}")
    return 130 if interrupted else 0


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, except the uninformative None and False."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text += f" (default: {shown})"
        return text


def _build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Normalizing flows in plain NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_text, handler):
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = command("demo", "train a neural spline flow on a toy 2-D data set; save the model and a figure", _cmd_demo)
    p.add_argument("--dataset", default="two-moons", help="two-moons, 8gaussians, checkerboard, two-spirals, rings, "
                                                          "pinwheel or bimodal")
    p.add_argument("--out", default="nflow-demo-out", help="output directory")
    p.add_argument("--epochs", type=_positive_int, default=40, help="training epochs")
    p.add_argument("--n", type=_positive_int, default=20_000, help="training points")
    p.add_argument("--seed", type=int, default=0, help="random seed")

    p = command("fit", "fit a flow to a CSV or .npy file of points", _cmd_fit)
    p.add_argument("data", help="DATA.csv (one point per line, commas or spaces) or DATA.npy")
    p.add_argument("--flow", choices=flow_names(), default="realnvp", help="which flow")
    p.add_argument("--layers", type=_positive_int, default=4, help="coupling or autoregressive layers")
    p.add_argument("--hidden", type=_parse_hidden, default=(64, 64), help="hidden widths, comma-separated")
    p.add_argument("--epochs", type=_positive_int, default=100, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="points per step")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default: 0.001; with --resume, the saved Adam's, which rejected steps "
                        "may have halved)")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="held out to pick the best epoch")
    p.add_argument("--patience", type=_positive_int, default=None,
                   help="stop after this many epochs without a better validation NLL")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="computation dtype")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh entropy)")
    p.add_argument("--out", default="model.npz", help="model file to write")
    p.add_argument("--resume", action="store_true", help="load --out and continue training it, Adam included "
                   "(its moments, step count and learning rate are kept, as are the architecture and "
                   "standardization: --flow, --layers, --hidden and --dtype are ignored); with the same data and "
                   "--seed, the validation split and shuffles are those an uninterrupted fit would draw")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--context-columns", type=context_cli.parse_columns, default=None, metavar="COLS",
                   help="columns of DATA that are a context, comma-separated, 0 the first (e.g. 2,3): the model "
                        "learns the density of the other columns given these, p(x | context); encode a category "
                        "as one-hot 0/1 columns. 'logprob', 'sample' and 'outliers' then take the context too")
    p.add_argument("--contamination", type=_contamination, default=None,
                   help="also set an outlier threshold: the fraction of DATA taken to be outliers, in (0, 0.5], or "
                        "'auto' (0.001); 'nflow-np outliers' then uses it")
    context_cli.add_backend_option(p)

    p = command("sample", "draw points from a model, as CSV, .npy or Parquet", _cmd_sample)
    p.add_argument("model", help="model file (.npz)")
    p.add_argument("-n", type=int, default=None, help="number of points (drawn and written in chunks, so any number "
                                                        "fits in memory; 0 writes an empty file) (default: 1000, or "
                                                        "one per row of --context-file)")
    p.add_argument("--out", default="-", help="file to write: .npy, .parquet, else CSV; - for stdout (CSV)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh entropy)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="draw on the Dask cluster at ADDRESS (nflow_np.dask.sample: the same points for a seed on "
                        "any cluster, but not those drawn without --scheduler)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--context", type=context_cli.parse_values, default=None, metavar="VALUES",
                       help="for a conditional model: the context of every point drawn, comma-separated (e.g. 1,0,0 "
                            "for the first of three one-hot categories)")
    group.add_argument("--context-file", default=None, metavar="FILE",
                       help="for a conditional model: a CSV or .npy file of context rows; one point is drawn per row")
    context_cli.add_backend_option(p)

    p = command("logprob", "log-density of each row of a data file, read and written in chunks", _cmd_logprob)
    p.add_argument("model", help="model file (.npz)")
    p.add_argument("data", help="DATA.csv, DATA.npy or DATA.parquet (its numeric columns)")
    p.add_argument("--out", default="-", help="file to write: .npy, .parquet, else CSV; - for stdout (CSV)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="score on the Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786); the model travels as its "
                        "file's bytes")
    context_cli.add_context_options(p, "to score")
    context_cli.add_backend_option(p)

    context_cli.add_outliers_parser(command)

    p = command("info", "describe a model file: architecture, sizes, dtype, training summary", cmd_info)
    p.add_argument("model", help="model file (.npz)")
    return parser


def main(argv=None):
    """Run the ``nflow-np`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad input, usage or lack of memory (after one
        ``nflow-np: error: ...`` line on stderr), 130 when interrupted
        (``fit`` still saves the best model so far when an epoch finished).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse reports usage errors (status 2) and --help (status 0) this way
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (CLIError, ValueError, TypeError, OSError, MemoryError) as exc:
        if os.environ.get("NFLOW_NP_TRACEBACK"):
            raise
        text = _one_line(exc)
        if isinstance(exc, MemoryError):
            text = f"out of memory ({text or 'MemoryError'}); try a smaller --batch-size or -n"
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return 2
    except _Interrupted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
