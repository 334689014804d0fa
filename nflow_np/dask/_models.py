"""Models on their way to Dask workers: the bytes of a safe model file, and a per-process cache of the rebuilt model.

A model never travels as pickled Python objects. The driver turns it into the bytes :func:`nflow_np.io.save`
would write (:class:`Payload`); the payload enters a task graph once, as one key, and each worker process rebuilds
the model from it with :func:`nflow_np.io.from_bytes` the first time a task needs it, checked exactly as ``load``
checks a file. Later tasks on that process find it in :data:`_CACHE`, keyed by the SHA-256 of the bytes.
"""

import hashlib
import io
import json
import os
import threading
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .. import io as model_io
from .._io_archive import _SPEC_KEY

__all__ = ["Payload", "payload_of", "cached_model"]

_CACHE = OrderedDict()
"""digest → rebuilt model, in this process (on a worker: once per worker, whatever the number of tasks)."""
_CACHE_SIZE = 4
_LOCK = threading.Lock()


class Payload:
    """The bytes of a model file with their SHA-256 and a name for messages; pickles as plain bytes and strings."""

    __slots__ = ("data", "digest", "name")

    def __init__(self, data, name="<model bytes>", digest=None):
        self.data = bytes(data)
        self.name = str(name)
        self.digest = digest or hashlib.sha256(self.data).hexdigest()

    def __reduce__(self):
        return Payload, (self.data, self.name, self.digest)

    def __dask_tokenize__(self):
        return ("nflow_np.Payload", self.digest, self.name)

    def __repr__(self):
        return f"Payload({self.name!r}, {len(self.data)} bytes, sha256 {self.digest[:12]})"

    def peek_spec(self):
        """The model file's spec (its JSON) as the driver glimpses it to shape a graph, or None when it cannot be
        read. Only the spec member is read: the model is checked where it is rebuilt, on the workers, by
        :func:`nflow_np.io.from_bytes` (a damaged file then fails there as ``load`` fails locally)."""
        try:
            with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
                raw = np.lib.format.read_array(io.BytesIO(zf.read(_SPEC_KEY + ".npy")), allow_pickle=False)
            spec = json.loads(raw.tobytes().decode("utf-8"))
        except (ValueError, KeyError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error):
            return None
        return spec if isinstance(spec, dict) else None


def payload_of(model, where):
    """A :class:`Payload` for ``model``: a flow or fitted ``FlowDensity`` (saved to bytes), the path of a model file,
    or the bytes of one (read as they are: a damaged file fails on the worker as ``load`` fails locally)."""
    if isinstance(model, Payload):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return Payload(model)
    if isinstance(model, (str, os.PathLike)):
        path = os.fsdecode(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: model: no such file: {path!r}")
        with open(path, "rb") as fh:
            return Payload(fh.read(), name=path)
    from ..distributions import Distribution
    from ..estimator import FlowDensity
    if isinstance(model, (Distribution, FlowDensity)):
        try:
            return Payload(model_io.to_bytes(model), name=f"<{type(model).__name__}>")
        except ValueError as exc:
            raise ValueError(f"{where}: the model cannot travel to Dask workers as a model file ({exc})") from None
    raise TypeError(f"{where}: model must be a flow, a fitted FlowDensity, a model file's path or its bytes; got "
                    f"{type(model).__name__}")


def cached_model(payload):
    """The model of ``payload``, rebuilt once per process (``nflow_np.io.from_bytes``: ValueError as ``load``)."""
    with _LOCK:
        model = _CACHE.get(payload.digest)
        if model is not None:
            _CACHE.move_to_end(payload.digest)
            return model
        model = model_io.from_bytes(payload.data, name=payload.name)
        _CACHE[payload.digest] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return model


def cache_info():
    """``{digest: type name}`` of the models this process holds (a worker's, through ``client.run``)."""
    with _LOCK:
        return {digest: type(model).__name__ for digest, model in _CACHE.items()}
