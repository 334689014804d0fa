"""Figures for flows: samples stage by stage, densities, data against samples, training curves.

matplotlib is an optional extra (``pip install nflow_np[plot]``). It is
imported inside each function, so neither ``import nflow_np`` nor
``import nflow_np.plot`` loads it; without it, a call raises ``ImportError``
saying how to install it.

Every function returns the matplotlib ``Figure`` it drew on and accepts
existing axes (``ax=`` or ``axes=``) to draw into a figure of your own.
"""

import math

import numpy as np

from ._plot_checks import _as_points, _axes_list, _check_bounds, _check_grid, _evaluate_on_grid, _log_density_fn, \
    _positive_int, _shades

__all__ = ["plot_stages", "plot_density", "plot_samples", "plot_history"]

# One colour per quadrant of the base sample, so a point can be followed from panel to panel.
_QUADRANT_COLOURS = ("C0", "C1", "C2", "C3")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("nflow_np.plot needs matplotlib, an optional extra: pip install nflow_np[plot]") from exc
    return plt


def _view_limits(points, clip_quantile):
    """Limits that keep the central ``1 - 2 clip_quantile`` of the points in view, or None.

    A few far-flung points (seed 000's cube stage throws some to |x| ~ 100)
    would otherwise shrink the bulk of the sample to a dot.
    """
    finite = points[np.all(np.isfinite(points), axis=1)]
    if len(finite) == 0:
        return None
    lo, hi = np.quantile(finite, [clip_quantile, 1.0 - clip_quantile], axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    return lo - pad, hi + pad


# ---------------------------------------------------------------------------
# plot_stages


def _stages_of(flow, where):
    """The flow's base distribution and its bijectors in sampling order."""
    from .bijectors import Chain

    base, bijector = getattr(flow, "distribution", None), getattr(flow, "bijector", None)
    if base is None or bijector is None or not hasattr(base, "sample"):
        raise TypeError(f"{where}: flow must be a TransformedDistribution (with .distribution and .bijector); "
                        f"got {type(flow).__name__}")
    # Chain lists its members last-applied first; sampling runs them from the end of the list.
    return base, list(reversed(bijector.bijectors)) if isinstance(bijector, Chain) else [bijector]


def plot_stages(flow, n=1000, rng=None, *, titles=None, axes=None, ncols=None, marker_size=2.0,
                panel_size=3.0, clip_quantile=0.005):
    """Scatter a base sample, then the same points after each bijector of the flow.

    The points are drawn from ``flow.distribution`` and pushed through the
    members of ``flow.bijector`` one at a time in sampling order (for a
    ``Chain``, from the last member of its list to the first), one panel per
    stage. Each point keeps the colour of the quadrant its base draw fell in
    (split at the base sample's coordinate-wise median), so the panels show
    where each part of the base ends up. A bijector that is not a ``Chain``
    gives two panels: the base and the flow's samples.

    Parameters
    ----------
    flow : TransformedDistribution
        A flow whose events have at least two coordinates. Larger events are
        flattened and their first two coordinates plotted; the figure's title
        says so.
    n : int, default 1000
        Number of base points.
    rng : numpy.random.Generator or int or None
        Source of randomness for the base sample.
    titles : sequence of str, optional
        One title per bijector, in sampling order; default: each bijector's
        position and ``name``.
    axes : sequence of matplotlib Axes, optional
        At least ``1 + number of stages`` axes to draw into, in panel order.
    ncols : int, optional
        Panels per row of a new figure; default ``min(panels, 4)``.
    marker_size : float, default 2.0
        Scatter marker size (points squared).
    panel_size : float, default 3.0
        Width and height of one panel of a new figure, in inches.
    clip_quantile : float, default 0.005
        Each panel shows the ``clip_quantile`` to ``1 - clip_quantile``
        quantiles of its points, so a few outliers do not squash the rest;
        0 shows every point.

    Returns
    -------
    matplotlib.figure.Figure
        With one axes per panel (a new figure's unused grid cells are removed).

    Raises
    ------
    ValueError
        If the flow draws fewer than two coordinates per event, ``titles`` has
        the wrong length, ``axes`` holds too few axes, or ``clip_quantile`` is
        outside [0, 0.5).
    TypeError
        If ``flow`` is not a flow or ``n`` is not an int.

    See Also
    --------
    plot_samples : The final stage next to the data.

    Examples
    --------
    >>> from nflow_np import flows, plot
    >>> fig = plot.plot_stages(flows.RealNVP(2, n_layers=2, rng=0), n=500, rng=1)
    >>> len(fig.axes)
    4
    """
    where = "plot_stages"
    plt = _pyplot()
    base, stages = _stages_of(flow, where)
    n = _positive_int(n, where, "n")
    if not 0.0 <= clip_quantile < 0.5:
        raise ValueError(f"{where}: clip_quantile must lie in [0, 0.5); got {clip_quantile}")
    if titles is None:
        titles = [f"{i}. {b.name}" for i, b in enumerate(stages, start=1)]
    elif len(titles) != len(stages):
        raise ValueError(f"{where}: titles must give one title per stage ({len(stages)}); got {len(titles)}")

    clouds = [np.asarray(base.sample(n, rng=rng))]
    dim = int(np.prod(clouds[0].shape[1:]))
    if dim < 2:
        raise ValueError(f"{where}: the flow must draw points with at least 2 coordinates; "
                         f"its base draws shape {clouds[0].shape[1:]} per sample")
    # All the mapping happens before a figure exists, so a flow that fails leaves no half-drawn figure.
    for b in stages:
        clouds.append(np.asarray(b.forward(clouds[-1])))
    flat = [c.reshape(n, -1)[:, :2] for c in clouds]
    centre = np.median(flat[0], axis=0)
    quadrant = (flat[0][:, 0] >= centre[0]).astype(int) + 2 * (flat[0][:, 1] >= centre[1]).astype(int)
    colours = np.asarray(_QUADRANT_COLOURS, dtype=object)[quadrant]

    panels = len(flat)
    if axes is None:
        ncols = min(panels, 4) if ncols is None else _positive_int(ncols, where, "ncols")
        nrows = math.ceil(panels / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False)
        grid = list(grid.ravel())
        for extra in grid[panels:]:
            extra.remove()
    else:
        grid = _axes_list(axes, panels, where, "axes")
        fig = grid[0].figure
    for ax, pts, title in zip(grid, flat, [f"base: {base.name}"] + [str(t) for t in titles]):
        ax.scatter(pts[:, 0], pts[:, 1], s=marker_size, c=colours, linewidths=0)
        ax.set_title(title, fontsize="medium")
        limits = _view_limits(pts, clip_quantile) if clip_quantile > 0 else None
        if limits is not None:
            ax.set_xlim(limits[0][0], limits[1][0])
            ax.set_ylim(limits[0][1], limits[1][1])
    if dim > 2:
        fig.suptitle(f"first 2 of {dim} coordinates")
    if axes is None:
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# plot_density


def plot_density(dist, bounds, grid=200, kind="contour", *, ax=None, log=False, levels=20, cmap="viridis",
                 title=None, chunk_size=16384, context=None):
    """Contour map and/or 3-D surface of a 2-D density on a rectangular grid.

    ``dist.log_prob`` is evaluated on a ``grid`` x ``grid`` lattice spanning
    ``bounds``, ``chunk_size`` points per call, and the density (or, with
    ``log=True``, the log-density) is drawn.

    Parameters
    ----------
    dist : Distribution, FlowDensity or callable
        A distribution over 2-D points (event shape ``(2,)``), such as a flow,
        a :class:`~nflow_np.estimator.FlowDensity` fitted on 2 features, or a
        function from an ``(m, 2)`` array to ``m`` log-densities, such as
        :func:`nflow_np.datasets.bimodal_log_prob`. The grid is built in
        ``dist.dtype`` when it has one.
    bounds : ((float, float), (float, float))
        ``((xmin, xmax), (ymin, ymax))``, finite, each min below its max, and
        inside the density's support: a bounded flow (one ending in a
        ``Sigmoid``, say) rejects points outside it.
    grid : int or (int, int), default 200
        Grid points along each axis, or ``(nx, ny)``; at least 2.
    kind : {"contour", "surface", "both"}, default "contour"
        Filled contours seen from above, a 3-D surface, or both side by side.
    ax : matplotlib Axes or pair of Axes, optional
        One axes for ``"contour"``, one 3-D axes (``projection="3d"``) for
        ``"surface"``, a 2-D then a 3-D axes for ``"both"``.
    log : bool, default False
        Draw the log-density instead of the density.
    levels : int or sequence of float, default 20
        Contour levels, as for ``matplotlib.axes.Axes.contourf``.
    cmap : str, default "viridis"
        Colour map.
    title : str, optional
        Figure title.
    chunk_size : int, default 16384
        Grid points per ``log_prob`` call.
    context : array_like, optional
        For a conditional density (a flow built with ``context=c``, a
        ``FlowDensity(conditional=True)``): the one context row whose density
        p(x | context) is drawn, ``c`` values (for a FlowDensity, in the units
        of the ``y`` it was fitted with). Required by a conditional density,
        refused by an unconditional one; a callable is then called as
        ``dist(x, context_rows)``.

    Returns
    -------
    matplotlib.figure.Figure
        With one axes (``"contour"``, ``"surface"``) or two (``"both"``).

    Raises
    ------
    ValueError
        If ``dist`` is not 2-D, ``bounds`` or ``grid`` are malformed, ``kind``
        is unknown, the given axes do not fit ``kind``, ``context`` is missing
        for a conditional density (or given to an unconditional one, or of the
        wrong width), or ``log_prob`` fails on the grid.

    See Also
    --------
    plot_samples : Samples where this draws the density.

    Examples
    --------
    >>> from nflow_np import datasets, plot
    >>> fig = plot.plot_density(datasets.bimodal_log_prob, ((-5, 5), (-5, 5)), grid=50, kind="both")
    >>> len(fig.axes)
    2
    """
    where = "plot_density"
    plt = _pyplot()
    if kind not in ("contour", "surface", "both"):
        raise ValueError(f"{where}: kind must be 'contour', 'surface' or 'both'; got {kind!r}")
    log_density = _log_density_fn(dist, where, context)
    box = _check_bounds(bounds, where)
    nx, ny = _check_grid(grid, where)
    chunk_size = _positive_int(chunk_size, where, "chunk_size")
    dtype = np.dtype(getattr(dist, "dtype", np.float64))
    dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)

    gx, gy = np.meshgrid(np.linspace(*box[0], nx), np.linspace(*box[1], ny))   # (ny, nx), as contourf wants
    points = np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(dtype)
    lp = _evaluate_on_grid(log_density, points, chunk_size, where).reshape(ny, nx)
    with np.errstate(over="ignore"):
        # contourf cannot place levels around NaN or -inf (a zero density's log): leave those cells blank
        values = np.ma.masked_invalid(lp if log else np.exp(lp))

    want = {"contour": ("2d",), "surface": ("3d",), "both": ("2d", "3d")}[kind]
    if ax is None:
        fig = plt.figure(figsize=(5.0 * len(want), 4.5))
        targets = [fig.add_subplot(1, len(want), i + 1, projection="3d" if w == "3d" else None)
                   for i, w in enumerate(want)]
    else:
        targets = _axes_list(ax, len(want), where, "ax")[:len(want)]
        for target, w in zip(targets, want):
            if (target.name == "3d") != (w == "3d"):
                raise ValueError(f"{where}: kind={kind!r} needs {' then '.join(want)} axes; "
                                 f"got {target.name} axes where {w} was expected")
        fig = targets[0].figure
    spans = box[:, 1] - box[:, 0]
    for target, w in zip(targets, want):
        if w == "2d":
            target.contourf(gx, gy, values, levels=levels, cmap=cmap)
            if 0.25 <= spans[1] / spans[0] <= 4.0:   # equal scales, unless that leaves a sliver
                target.set_aspect("equal", adjustable="box")
        else:
            target.plot_surface(gx, gy, values.filled(np.nan), cmap=cmap, linewidth=0, antialiased=False)
            target.set_zlabel("log-density" if log else "density")
        target.set_xlabel("$x_1$")
        target.set_ylabel("$x_2$")
    if title is not None:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------
# plot_samples and plot_history


def _panel_height(finite, width):
    """Height in inches of a panel that fits 2-D points at equal scales (a word is wide, a spiral square)."""
    if finite.ndim == 1 or len(finite) == 0:
        return 4.0
    span = np.ptp(finite, axis=0)
    aspect = span[1] / span[0] if span[0] > 0 else 1.0
    # bounded so a degenerate cloud stays readable, plus room for the title and tick labels
    return float(np.clip(width * np.clip(aspect, 0.25, 4.0), 1.5, 7.0)) + 0.9


def _draw_points(ax, arr, bins, colour, label, marker_size, alpha, shade=None, marker="o"):
    """Scatter 2-D points (a histogram of 1-D ones) in ``colour``, or coloured by ``shade``, their context:
    ``("category", codes, k)`` or ``("value", values, (vmin, vmax))``; returns the scatter."""
    if arr.ndim == 1:
        return ax.hist(arr[np.isfinite(arr)], bins=bins, density=True, color=colour, alpha=alpha, label=label)
    if shade is None:
        return ax.scatter(arr[:, 0], arr[:, 1], s=marker_size, color=colour, alpha=alpha, linewidths=0, label=label,
                          marker=marker)
    kind, values, extra = shade
    if kind == "category":
        for k in range(extra):
            mine = values == k
            ax.scatter(arr[mine, 0], arr[mine, 1], s=marker_size, color=f"C{k % 10}", alpha=alpha, linewidths=0,
                       marker=marker, label=f"{label}: context {k}")
        return None
    return ax.scatter(arr[:, 0], arr[:, 1], s=marker_size, c=values, cmap="viridis", vmin=extra[0], vmax=extra[1],
                      alpha=alpha, linewidths=0, label=label, marker=marker)


def plot_samples(data, samples, ax=None, title=None, *, overlay=None, labels=("data", "samples"),
                 marker_size=3.0, alpha=0.6, context=None):
    """Training data against a flow's samples, side by side or overlaid.

    2-D points are scattered at equal axis scales; 1-D values (shape ``(n,)``
    or ``(n, 1)``) are drawn as density histograms over shared bins.

    Parameters
    ----------
    data, samples : array_like of shape (n, 2), (n,) or (n, 1)
        Both 2-D or both 1-D; their lengths may differ.
    ax : matplotlib Axes or pair of Axes, optional
        One axes: both sets overlaid on it. A pair: data on the first,
        samples on the second. Default: a new figure laid out as ``overlay``
        says.
    title : str, optional
        Title of the figure (of the axes, when overlaid).
    overlay : bool, optional
        For a new figure: one shared panel (True) or two panels with shared
        limits (False, the default).
    labels : (str, str), default ("data", "samples")
        Names of the two sets, shown as panel titles or in the legend.
    marker_size : float, default 3.0
        Scatter marker size (points squared).
    alpha : float, default 0.6
        Opacity of markers and bars.
    context : array_like or (array_like, array_like), optional
        The context of each 2-D point (for a conditional model: the ``y``
        the data came with and the samples were drawn at), which colours it:
        one array for both sets (when they have as many points, such as
        samples drawn with ``sample(len(data), y=y)``), or a pair
        ``(data_context, samples_context)``. One column (shape ``(n,)`` or
        ``(n, 1)``): coloured by value, with a colour bar; several one-hot
        columns: one colour per category, with a legend. Overlaid, the
        samples are drawn as crosses.

    Returns
    -------
    matplotlib.figure.Figure
        A new one has one axes (overlaid) or two (side by side); a colour bar
        adds one.

    Raises
    ------
    ValueError
        If an input has another shape or is empty, the two differ in
        dimension, ``ax`` holds more than two axes, or ``context`` does not
        hold one finite value or one-hot row per point.

    See Also
    --------
    plot_density : The density where this draws samples.

    Examples
    --------
    >>> import numpy as np
    >>> from nflow_np import plot
    >>> rng = np.random.default_rng(0)
    >>> fig = plot.plot_samples(rng.normal(size=(200, 2)), rng.normal(size=(300, 2)))
    >>> len(fig.axes)
    2
    """
    where = "plot_samples"
    plt = _pyplot()
    data, samples = _as_points(data, where, "data"), _as_points(samples, where, "samples")
    if data.ndim != samples.ndim:
        raise ValueError(f"{where}: data and samples must both be 1-D or both 2-D points; "
                         f"got shapes {data.shape} and {samples.shape}")
    both = np.concatenate([data, samples])
    finite = both[np.all(np.isfinite(both.reshape(len(both), -1)), axis=1)]
    bins = np.histogram_bin_edges(finite, bins=40) if data.ndim == 1 and len(finite) else 40
    shades = _shades(context, data, samples, where)

    if ax is None:
        height = _panel_height(finite, 4.5)
        fig, targets = plt.subplots(1, 1 if overlay else 2, figsize=(5.0 if overlay else 9.0, height),
                                    sharex=True, sharey=True, squeeze=False)
        targets = list(targets.ravel())
    else:
        targets = list(np.asarray(ax, dtype=object).ravel())
        if len(targets) not in (1, 2):
            raise ValueError(f"{where}: ax must be one axes (overlay) or a pair (side by side); got {len(targets)}")
        fig = targets[0].figure
    drawn = []
    if len(targets) == 1:
        drawn.append(_draw_points(targets[0], data, bins, "C0", labels[0], marker_size, alpha, shades[0]))
        drawn.append(_draw_points(targets[0], samples, bins, "C1", labels[1], marker_size, alpha, shades[1],
                                  marker="o" if context is None else "x"))
        targets[0].legend(loc="best", markerscale=3.0 if data.ndim == 2 else 1.0)
        if title is not None:
            targets[0].set_title(title)
    else:
        for target, arr, colour, label, shade in zip(targets, (data, samples), ("C0", "C1"), labels, shades):
            drawn.append(_draw_points(target, arr, bins, colour, label, marker_size, alpha, shade))
            target.set_title(label)
            if shade is not None and shade[0] == "category":
                target.legend(loc="best", markerscale=3.0)
        if title is not None:
            fig.suptitle(title)

    for target in targets if data.ndim == 2 else ():
        target.set_aspect("equal", adjustable="box")
    if ax is None:
        fig.tight_layout()
    if shades[0] is not None and shades[0][0] == "value":
        # after the layout, which a colour bar's axes would not fit
        fig.colorbar(drawn[0], ax=targets, label="context")
    return fig


def plot_history(history, ax=None, *, log_scale=False, title=None):
    """Training (and validation) loss per epoch, with the kept epoch marked.

    The epoch whose parameters training kept (``history.best_epoch``) is
    drawn as a dashed vertical line.

    Parameters
    ----------
    history : nflow_np.train.History or mapping
        What :func:`nflow_np.train.fit` or :func:`~nflow_np.train.fit_to_target`
        returned, or a mapping with a ``"train_loss"`` list (and optionally
        ``"val_loss"`` and ``"best_epoch"``). ``fit_to_target`` records one
        loss per ``log_every`` steps, so there an "epoch" is such a window.
    ax : matplotlib Axes, optional
        Where to draw; default a new figure.
    log_scale : bool, default False
        Logarithmic loss axis (for losses that stay positive).
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        A new one has one axes.

    Raises
    ------
    ValueError
        If ``history`` holds no training loss.
    TypeError
        If ``history`` is neither a History nor a mapping.

    See Also
    --------
    nflow_np.train.fit : Produces the History.

    Examples
    --------
    >>> from nflow_np import plot
    >>> fig = plot.plot_history({"train_loss": [3.0, 2.5, 2.2], "val_loss": [3.1, 2.6, 2.4]})
    >>> len(fig.axes)
    1
    """
    where = "plot_history"
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, dict):
        train, val, best = history.get("train_loss"), history.get("val_loss"), history.get("best_epoch", -1)
    elif hasattr(history, "train_loss"):
        train, val, best = history.train_loss, getattr(history, "val_loss", None), getattr(history, "best_epoch", -1)
    else:
        raise TypeError(f"{where}: history must be an nflow_np.train.History or a mapping with 'train_loss'; "
                        f"got {type(history).__name__}")
    train = np.asarray([] if train is None else train, dtype=np.float64).ravel()
    val = np.asarray([] if val is None else val, dtype=np.float64).ravel()
    if train.size == 0:
        raise ValueError(f"{where}: history has no training loss (train_loss is empty)")

    made = ax is None
    fig, ax = plt.subplots(figsize=(6.0, 4.0)) if made else (ax.figure, ax)
    for label, losses in (("train", train), ("validation", val)):
        if losses.size:
            ax.plot(np.arange(1, losses.size + 1), losses, marker="." if losses.size < 50 else None, label=label)
    if best is not None and 0 <= best < train.size:
        ax.axvline(best + 1, color="0.5", linestyle="--", linewidth=1.0, label=f"kept (epoch {best + 1})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats)")
    if log_scale:
        ax.set_yscale("log")
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="best")
    if made:
        fig.tight_layout()
    return fig
