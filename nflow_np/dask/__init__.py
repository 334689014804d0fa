"""Scoring, sampling and fitting at scale on Dask (``pip install "nflow_np[dask]"``).

Importing this module imports Dask; ``import nflow_np`` alone never does. The
same entry points are reached from the core objects when a Dask array
arrives: ``flow.log_prob(x)`` and ``FlowDensity.score_samples(X)`` /
``score(X)`` with ``x`` a ``dask.array.Array`` return lazy Dask arrays,
``flow.sample(n, rng=seed, chunks=k)`` returns one, and
:func:`nflow_np.train.fit` streams a Dask array, a memory map or a zarr array
through a shuffle buffer.

A model travels to the workers as the bytes of its model file
(:func:`nflow_np.io.to_bytes`), never as pickled objects, and is rebuilt once
per worker process (checked as :func:`nflow_np.load` checks a file).
"""

try:
    import dask.array  # noqa: F401
except ImportError as exc:      # pragma: no cover - the message is the point
    raise ImportError("nflow_np.dask needs Dask: pip install \"nflow_np[dask]\" (dask[array] and distributed)") \
        from exc

from ._files import from_npy, store_npy
from ._models import Payload, cache_info
from ._parallel import fit_distributed
from ._sample import UNIT, sample, sample_to  # noqa: F401  (UNIT: rows per seeded unit)
from ._score import log_prob, score, score_samples

__all__ = ["log_prob", "score_samples", "score", "sample", "sample_to", "from_npy", "store_npy", "fit_distributed",
           "Payload", "cache_info"]
