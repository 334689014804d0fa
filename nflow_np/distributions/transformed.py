"""``TransformedDistribution``: a base distribution pushed through a bijector (a flow)."""

import numpy as np

from .._validation import as_float_array, as_generator, as_sample_shape, is_dask_array, sum_to_shape
from ..bijectors.base import CONTEXT_GRAD, Bijector
from ..kernels.backend import on_device, resolve_backend
from .base import Distribution, warn_if_not_finite


class TransformedDistribution(Distribution):
    """The distribution of ``bijector.forward(z)`` for ``z ~ distribution``.

    ``log_prob(x) = distribution.log_prob(bijector.inverse(x)) + bijector.inverse_log_det_jacobian(x)``
    and ``sample`` draws from the base and applies ``bijector.forward``, as in
    TensorFlow Probability (whose attribute names ``distribution`` and
    ``bijector`` this keeps).

    The event rank is the larger of the base's and the bijector's: a scalar
    ``Normal`` with batch shape ``(d,)`` under a vector bijector becomes one
    d-dimensional event, its log-densities summed over the last axis.

    A flow whose bijector is conditional (``context_size > 0``) is a
    conditional density p(x | context): ``log_prob(x, context=c)`` takes one
    context row per point (or one row for all), and ``sample(n, context=c)``
    one row per sample (or one row for all; ``sample(context=c)`` draws one
    sample per row of ``c``).

    ``log_prob``, ``sample`` and ``sample_and_log_prob`` take ``backend=``
    (``"numpy"``, ``"numba"`` or ``"cuda"``; default
    :func:`nflow_np.get_backend`). With ``"numba"``, a flow whose layers the
    compiled program covers (see :func:`nflow_np.kernels.plan.supports`) runs
    as one compiled call; with ``"cuda"`` the same program runs on the GPU
    (unconditional flows; its samples come from the GPU's own random stream).
    Other flows run the bijectors' NumPy passes whatever the backend.

    With ``x`` a ``dask.array.Array``, ``log_prob`` returns a lazy Dask array
    (:func:`nflow_np.dask.log_prob`); ``sample(n, rng=seed, chunks=k)`` returns
    one (:func:`nflow_np.dask.sample`). Dask is imported only then.

    ``embedding`` (a conditional flow only): a network applied to the raw
    context first, ``h = embedding(context)``; every layer then sees ``h``
    (``log p(x | c) = log p_base(z) + log|det dz/dx|`` with ``z = inverse(x; h(c))``).
    ``context_size`` becomes the raw width ``embedding.in_features``; the
    layers' own ``context`` width must equal ``embedding.out_features``. Its
    parameters are the flow's ``"embedding.*"``, trained jointly: the layers'
    context gradients are summed and taken back through ``embedding.backward``.
    Any object following :mod:`nflow_np.nn.embedding`'s protocol works, e.g.
    ``nflow_np.nn.MLP(raw_width, k, (32,))``. With an embedding the compiled
    backends run the embedding in NumPy and the layers compiled for
    ``log_prob`` and sampling; training runs the NumPy passes.

    References (embedding): the ``embedding_net`` of ``nflows`` (Durkan,
    Bekasov, Murray and Papamakarios, 2019).
    """

    def __init__(self, distribution, bijector, embedding=None):
        if not isinstance(distribution, Distribution):
            raise TypeError(f"TransformedDistribution: distribution must be a Distribution; "
                            f"got {type(distribution).__name__}")
        if not isinstance(bijector, Bijector):
            raise TypeError(f"TransformedDistribution: bijector must be a Bijector; got {type(bijector).__name__}")
        if bijector.dtype is not None and bijector.dtype != distribution.dtype:
            raise TypeError(f"TransformedDistribution: the base distribution is {distribution.dtype} but the "
                            f"bijector is {bijector.dtype}; build both with one dtype")
        self.distribution = distribution
        self.bijector = bijector
        self.dtype = distribution.dtype
        full = distribution.batch_shape + distribution.event_shape
        rank = max(distribution.event_ndims, bijector.event_ndims)
        if rank > len(full):
            raise ValueError(f"TransformedDistribution: {bijector.name} acts on events of rank "
                             f"{bijector.event_ndims}, but the base distribution draws shape {full}; give the base "
                             f"a batch or event shape, e.g. MultivariateNormalDiag(np.zeros(d))")
        self.batch_shape = full[:len(full) - rank]
        self.event_shape = full[len(full) - rank:]
        self._base_extra = rank - distribution.event_ndims
        if embedding is not None:
            from ..nn.embedding import check_embedding
            embedding = check_embedding(embedding, bijector.context_size, self.dtype,
                                        "TransformedDistribution")
        self.embedding = embedding

    @property
    def context_size(self):
        """Width of the conditioning input (0 for an unconditional flow); the embedding's input width if any."""
        if self.embedding is not None:
            return int(self.embedding.in_features)
        return self.bijector.context_size

    def parameters(self):
        for key, value in self.distribution.parameters():
            yield f"distribution.{key}", value
        for key, value in self.bijector.parameters():
            yield f"bijector.{key}", value
        if self.embedding is not None:
            for key, value in self.embedding.parameters():
                yield f"embedding.{key}", value

    @property
    def name(self):
        return "TransformedDistribution"

    def _base_log_prob(self, z):
        lp = self.distribution._log_prob(z)
        if self._base_extra:
            lp = lp.sum(axis=tuple(range(lp.ndim - self._base_extra, lp.ndim)))
        return lp

    def _prepare(self, x, method):
        x = super()._prepare(x, method)
        self.bijector._check_input_shape(x, f"{self.name}.{method}", "x")
        return x

    # ---------------------------------------------------------------- compiled path
    def _compiled(self, backend, method):
        """The compiled program to use for this call (its GPU runner for ``"cuda"``), or None for the NumPy passes."""
        name = resolve_backend(backend, f"{self.name}.{method}")
        if name == "numpy":
            return None
        from ..kernels.plan import program_for
        program = program_for(self)
        if program is None or not all(b.initialized for b in program.actnorms):
            return None     # ActNorm initializes on its first data batch, in the NumPy pass
        if method == "log_prob" and program.batch_statistics():
            return None     # a training-mode BatchNorm normalizes by the whole batch: not split into chunks
        if name == "cuda":
            from ..kernels.cuda.runner import runner_for
            return runner_for(program)      # None (the NumPy passes) for a layer the GPU kernels do not cover
        return program

    def _context_args(self, context, points, method, argname="x"):
        """The bijector's extra pass arguments for ``context``, validated against ``points`` (and embedded)."""
        return self._embedded_context(context, points, method, argname)[0]

    def _raw_context(self, context, points, where, argname):
        """An embedded flow's raw context, validated, and the batch shape of ``points`` it broadcasts to."""
        c = self.context_size
        if context is None:
            raise ValueError(f"{where}: conditional on a context of size {c}; pass context= an array of shape "
                             f"(..., {c}), one row per point or one row for all")
        ctx = as_float_array(context, self.dtype, where, "context")
        if ctx.ndim == 0 or ctx.shape[-1] != c:
            raise ValueError(f"{where}: context must have shape (..., {c}); got shape {ctx.shape}")
        batch = points.shape[:points.ndim - self.bijector.event_ndims]
        try:
            np.broadcast_shapes(ctx.shape[:-1], batch)
        except ValueError:
            raise ValueError(f"{where}: context of shape {ctx.shape} does not broadcast to the batch shape "
                             f"{batch} of {argname} (one context row per point, or one row for all)") from None
        return ctx, batch

    def _prepare_context(self, context, points, method, argname="x", where=None):
        """``context`` validated and broadcast to the batch shape of ``points`` (raw: before any embedding)."""
        where = where or f"{self.name}.{method}"
        if self.embedding is None:
            return self.bijector._prepare_context(context, points, method, argname, where=where)
        ctx, batch = self._raw_context(context, points, where, argname)
        return np.broadcast_to(ctx, batch + ctx.shape[-1:])

    def _embedded_context(self, context, points, method, argname="x"):
        """``(extra pass arguments, embedding cache)``: the embedding runs once on the given rows, its features
        are broadcast to the batch; the cache (None without an embedding) is what :meth:`_embedding_backward`
        takes."""
        where = f"{self.name}.{method}"
        if self.embedding is None:
            return self.bijector._context_args(self.bijector._prepare_context(
                context, points, method, argname, where=where)), None
        ctx, batch = self._raw_context(context, points, where, argname)
        features, cache = self.embedding.forward_with_cache(ctx)
        k = self.bijector.context_size
        if features.shape != ctx.shape[:-1] + (k,) or features.dtype != self.dtype:
            raise ValueError(f"{where}: the embedding returned features of shape {features.shape} and dtype "
                             f"{features.dtype}; expected shape {ctx.shape[:-1] + (k,)} and dtype {self.dtype}")
        return (np.broadcast_to(features, batch + (k,)),), (cache, features.shape)

    def _embedding_backward(self, grads, embedding_cache):
        """Take the layers' summed context gradient (``grads[CONTEXT_GRAD]``, popped) back through the embedding;
        return its parameter gradients keyed ``"embedding.*"`` (empty without an embedding)."""
        grad_features = grads.pop(CONTEXT_GRAD, None)
        if embedding_cache is None:
            return {}
        cache, shape = embedding_cache
        _, egrads = self.embedding.backward(cache, sum_to_shape(np.asarray(grad_features), shape))
        return {f"embedding.{k}": v for k, v in egrads.items()}

    def log_prob(self, x, context=None, backend=None):
        """Log-density at ``x``, one value per event; ``backend`` picks NumPy or the compiled program.

        A Dask array ``x`` (rows chunked, the event axis whole) gives a lazy Dask array of log-densities, one task
        per block (see :func:`nflow_np.dask.log_prob`); ``context`` then aligns with its rows.
        """
        if is_dask_array(x):
            from ..dask import log_prob as lazy_log_prob
            return lazy_log_prob(self, x, context, backend=backend)
        if on_device(x):    # a CUDA array: evaluated on the GPU, the result left there
            from ..kernels.cuda.runner import log_prob_on_device
            return log_prob_on_device(self, x, context, backend)
        x = self._prepare(x, "log_prob")
        extra = self._context_args(context, x, "log_prob")
        program = self._compiled(backend, "log_prob")
        where = f"{self.name}.log_prob"
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                if program is None:
                    lp = self._log_prob(x, *extra)
                else:
                    d = self.event_shape[0]
                    lp = program.log_prob(x.reshape(-1, d), self._context_rows(extra)).reshape(x.shape[:-1])
                    if np.any(np.isnan(lp)):
                        # a point outside a layer's domain: the NumPy passes name the layer and the point
                        self._log_prob(x, *extra)
        except ValueError as exc:
            if "must be finite" not in str(exc):
                raise       # a point outside a bijector's domain: its own message says which
            # x passed validation: an inner layer refusing a non-finite input means the pass overflowed on the way
            raise ValueError(f"{where}: the inverse pass of {self.bijector.name} overflows the {self.dtype} range "
                             f"at x ({exc})") from exc
        nan = np.isnan(lp)
        if np.any(nan):
            idx = np.unravel_index(int(np.argmax(nan)), nan.shape) if nan.ndim else ()
            raise ValueError(f"{where}: the inverse pass of {self.bijector.name} overflows the {self.dtype} range "
                             f"at x{list(idx) if idx else ''} (the log-density came out NaN)")
        return lp

    def prob(self, x, context=None, backend=None):
        """Density at ``x``."""
        return np.exp(self.log_prob(x, context=context, backend=backend))

    def _context_rows(self, extra):
        """The validated context as ``(n, c)`` rows for the compiled program (None when unconditional)."""
        return extra[0].reshape(-1, self.bijector.context_size) if extra else None

    def _sample_shape(self, sample_shape, context, method):
        if isinstance(sample_shape, tuple) and not sample_shape:
            # sample(context=c) draws one sample per context row
            return () if context is None or np.ndim(context) <= 1 else tuple(np.shape(context)[:-1])
        return as_sample_shape(sample_shape, f"{self.name}.{method}")

    def sample(self, sample_shape=(), rng=None, context=None, backend=None, chunks=None):
        """Draw ``sample_shape`` samples (``rng``: Generator or seed); ``backend`` as in :meth:`log_prob`.

        With ``chunks`` (rows per block), the result is a lazy Dask array of ``sample_shape`` (an int) samples,
        reproducible for an int seed ``rng`` whatever the chunks and the workers (see
        :func:`nflow_np.dask.sample`).

        Where the bijector's forward map overflows the dtype at a base point
        (``Exp`` beyond 709.78 in float64, 88.72 in float32), that sample is
        ``inf`` (or NaN, if the overflow meets another infinity), and a
        ``RuntimeWarning`` says how many values are. For a scalar map,
        :func:`nflow_np.testing.check_bijector` reports the interval on which
        forward stays finite (``"forward_finite_range"``).
        """
        if chunks is not None:
            from ..dask import sample as lazy_sample
            n = sample_shape[0] if isinstance(sample_shape, (tuple, list)) and len(sample_shape) == 1 else sample_shape
            if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)):
                raise TypeError(f"{self.name}.sample: with chunks=, the sample size must be an int; got "
                                f"{sample_shape!r}")
            return lazy_sample(self, n, rng, chunks, context=context, backend=backend)
        return self._draw(sample_shape, rng, context, backend, "sample", with_log_prob=False)[0]

    def sample_and_log_prob(self, sample_shape=(), rng=None, context=None, backend=None):
        """Samples and their log-densities from one forward pass (no inverse needed); overflow as in :meth:`sample`."""
        return self._draw(sample_shape, rng, context, backend, "sample_and_log_prob", with_log_prob=True)

    def _draw(self, sample_shape, rng, context, backend, method, with_log_prob):
        with np.errstate(over="ignore", invalid="ignore"):
            x, log_prob = self._draw_unchecked(sample_shape, rng, context, backend, method, with_log_prob)
        warn_if_not_finite(x, f"{self.name}.{method}", f"the forward map of {self.bijector.name} overflows the "
                           f"{self.dtype} range at their base points", stacklevel=4)
        return x, log_prob

    def _draw_unchecked(self, sample_shape, rng, context, backend, method, with_log_prob):
        shape = self._sample_shape(sample_shape, context, method)
        program = self._compiled(backend, method)
        if context is None and hasattr(program, "draw"):
            # the GPU draws its base points on the device: its own stream, reproducible for a seed
            x, log_prob = program.draw(int(np.prod(shape, dtype=np.int64)), as_generator(rng))
            return x.reshape(shape + self.event_shape), log_prob.reshape(shape)
        # the same base draws on every CPU backend, so all of them give the same samples for a seed
        z = self.distribution._sample(shape, as_generator(rng))
        extra = self._context_args(context, z, method, "the samples")
        if program is not None:
            x, log_prob = program.sample(z.reshape(-1, self.event_shape[0]), self._context_rows(extra))
            return x.reshape(z.shape), log_prob.reshape(z.shape[:-1])
        if not with_log_prob:
            return self.bijector._forward(z, *extra), None
        x, log_det = self.bijector._forward_and_log_det(z, *extra)
        return x, self._base_log_prob(z) - self.bijector._reduce(log_det, self.event_ndims)

    def _log_prob(self, x, *context):
        z, log_det = self.bijector._inverse_and_log_det(x, *context)
        return self._base_log_prob(z) + self.bijector._reduce(log_det, self.event_ndims)

    def _sample(self, shape, rng):
        return self.bijector._forward(self.distribution._sample(shape, rng))

    def _scalar_check(self, method):
        if self.event_shape != ():
            raise ValueError(f"{self.name}.{method}: the CDF is defined for scalar flows only; "
                             f"this flow has event shape {self.event_shape}")

    def _log_cdf(self, x):
        self._scalar_check("log_cdf")
        z = self.bijector._inverse(x)
        increasing = self.bijector._is_increasing()
        if np.all(increasing):
            return self.distribution._log_cdf(z)
        if not np.any(increasing):
            return self.distribution._log_survival(z)
        return np.where(increasing, self.distribution._log_cdf(z), self.distribution._log_survival(z))

    def _log_survival(self, x):
        self._scalar_check("survival_function")
        z = self.bijector._inverse(x)
        increasing = self.bijector._is_increasing()
        return np.where(increasing, self.distribution._log_survival(z), self.distribution._log_cdf(z))

    def __repr__(self):
        embedding = "" if self.embedding is None else f", embedding={self.embedding!r}"
        return f"TransformedDistribution(distribution={self.distribution!r}, bijector={self.bijector!r}{embedding})"
