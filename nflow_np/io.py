"""Saving and loading flows, bijectors, distributions and ``FlowDensity`` estimators.

A model file is one ``.npz`` archive holding

``__spec__``
    a uint8 array of UTF-8 JSON: the architecture (every constructor argument
    that rebuilds each object: masks, hidden widths, activation, order, clamp,
    dtype, names...) with a ``format_version``, and, for every array, its key,
    shape and dtype;
one array per parameter and buffer
    keyed like ``flow.parameters()`` (``"bijector.0.net.w0"``), buffers next
    to them (``"bijector.2.running_mean"``);
for a fitted ``FlowDensity``, its optimizer's state
    Adam's moments as arrays ``"optimizer.m.<parameter>"`` and
    ``"optimizer.v.<parameter>"``, its scalars (``lr``, ``steps``, ``betas``,
    ``eps``, ``weight_decay``, ``clip_norm``) in the spec, so that ``nflow-np
    fit --resume`` continues the same Adam. Such a file is format version 2;
    every other file is version 1, which older nflow_np releases read too.
for a conditional ``FlowDensity``
    its context's standardization, ``"estimator.context_mean"`` and
    ``"estimator.context_scale"``; a ``FlowOutlierDetector`` also stores its
    threshold ``offset_`` in the spec (its ``contamination`` is among its
    parameters).

:func:`load` reads it with ``np.load(path, allow_pickle=False)`` and rebuilds
each object from its constructor arguments before copying the stored arrays
in: no code from the file runs. Each member's ``.npy`` header is checked
against the zip directory and the spec before the member is read, so that a
hostile file cannot make it allocate more than it declares honestly; members
the spec does not list are never read. Every way a file can be wrong (truncated,
corrupted, another format version, hand-edited) raises ``ValueError`` naming
what is wrong and where.

The registry :data:`REGISTRY` (built in :mod:`nflow_np._io_registry`) maps a
type name to ``(to_spec, from_spec)``; :func:`register` adds a type of your own.
"""

import dataclasses
import io as _io
import json
import math
import os
import secrets
import stat

import numpy as np

from ._io_archive import FORMAT_NAME, FORMAT_VERSION, _FLOAT_NAMES, _SPEC_KEY, _read, as_path
from ._io_registry import _NAMES, REGISTRY, register
from .bijectors import Inline
from .distributions import TransformedDistribution

__all__ = ["FORMAT_VERSION", "REGISTRY", "register", "save", "load", "read_spec", "to_bytes", "from_bytes"]

_MOMENTS = ("m", "v")
_OPTIMIZER_SCALARS = ("lr", "steps", "betas", "eps", "weight_decay", "clip_norm")
_OPTIMIZER_VERSION = 2   # the first version with optimizer state


# ---------------------------------------------------------------------------- encoding

def _join(path, name):
    return f"{path}.{name}" if path else name


class _Encoder:
    def __init__(self):
        self.arrays = {}

    def encode(self, obj, path):
        if isinstance(obj, Inline):
            raise ValueError(f"save: the Inline bijector {obj.name!r} at {path or 'the root'} holds user code "
                             f"(Python functions), which a model file cannot store; rebuild it in code, or replace "
                             f"it with built-in bijectors before saving")
        name = _NAMES.get(type(obj))
        if name is None:
            raise ValueError(f"save: cannot store a {type(obj).__name__} (at {path or 'the root'}); savable types "
                             f"are {', '.join(sorted(REGISTRY))}. Add yours with nflow_np.io.register")
        to_spec, _ = REGISTRY[name]
        config, arrays = to_spec(obj, lambda child, local: self.encode(child, _join(path, local)))
        records = {}
        for local, value in arrays.items():
            records[local] = self.add(_join(path, local), value, f"{name} at {path or 'the root'}")
        return {"type": name, "config": config, "arrays": records}

    def add(self, key, value, where):
        value = np.asarray(value)
        if value.dtype.name not in _FLOAT_NAMES:
            raise TypeError(f"save: array {key!r} of {where} has dtype {value.dtype}; expected float32 or float64")
        if not np.isfinite(value).all():
            raise ValueError(f"save: array {key!r} of {where} holds NaN or infinity; a model with non-finite "
                             f"weights cannot be stored (did training diverge?)")
        if key in self.arrays or key == _SPEC_KEY:
            raise ValueError(f"save: two arrays share the key {key!r}")
        self.arrays[key] = value
        return {"key": key, "shape": list(value.shape), "dtype": value.dtype.name}


def _json_float(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _history_to_json(history):
    out = {}
    for f in dataclasses.fields(history):
        value = getattr(history, f.name)
        if isinstance(value, list):
            out[f.name] = [_json_float(v) for v in value]
        elif isinstance(value, (bool, np.bool_)):
            out[f.name] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[f.name] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[f.name] = _json_float(value)
    return out


def _checked_adam_state(flow, state):
    """``state`` loaded into a scratch Adam over ``flow``'s parameters: checked (names, shapes, dtypes, finite
    values, hyperparameters) exactly as resuming will check it, and normalized."""
    from .train import Adam
    probe = Adam(flow.parameters())
    probe.load_state_dict(state)
    return probe.state_dict()


def _optimizer_spec(estimator, encoder):
    """The spec entry of a FlowDensity's optimizer state (None when it has none); its moments go to ``encoder``."""
    state = getattr(estimator, "optimizer_state_", None)
    if state is None:
        return None
    try:
        state = _checked_adam_state(estimator.flow_, state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save: the FlowDensity's optimizer_state_ does not fit its flow ({exc})") from None
    if state["clip_norm"] is not None and not math.isfinite(state["clip_norm"]):
        raise ValueError(f"save: the optimizer's clip_norm {state['clip_norm']} cannot be stored; use None")
    scalars = {key: state[key] for key in _OPTIMIZER_SCALARS}
    scalars["betas"] = list(scalars["betas"])
    arrays = {moment: {name: encoder.add(f"optimizer.{moment}.{name}", value, "the optimizer state")
                       for name, value in state[moment].items()} for moment in _MOMENTS}
    return {"type": "Adam", "state": scalars, "arrays": arrays}


def _estimator_spec(estimator, encoder):
    name = type(estimator).__name__
    if name not in _estimator_classes():
        raise TypeError(f"save: cannot save a {name} (a subclass of FlowDensity); save a FlowDensity or "
                        f"FlowOutlierDetector")
    params = estimator._json_params(estimator.get_params())
    if not hasattr(estimator, "flow_"):
        raise ValueError(f"save: this {name} is not fitted; fit it before saving")
    spec = {"class": name, "params": params, "n_features_in": int(estimator.n_features_in_),
            "history": None if getattr(estimator, "history_", None) is None else _history_to_json(estimator.history_),
            "arrays": {"mean": encoder.add("estimator.mean", np.asarray(estimator.mean_, np.float64), "FlowDensity"),
                       "scale": encoder.add("estimator.scale", np.asarray(estimator.scale_, np.float64),
                                            "FlowDensity")},
            "optimizer": _optimizer_spec(estimator, encoder)}
    if hasattr(estimator, "context_mean_"):
        # a conditional model: its context's standardization
        spec["arrays"]["context_mean"] = encoder.add("estimator.context_mean",
                                                     np.asarray(estimator.context_mean_, np.float64), name)
        spec["arrays"]["context_scale"] = encoder.add("estimator.context_scale",
                                                      np.asarray(estimator.context_scale_, np.float64), name)
    if hasattr(estimator, "offset_"):
        if not math.isfinite(estimator.offset_):
            raise ValueError(f"save: this {name}'s offset_ is {estimator.offset_}; a threshold must be finite")
        spec["offset"] = float(estimator.offset_)
    return spec, encoder.encode(estimator.flow_, "flow")


def _estimator_classes():
    from .estimator import FlowDensity, FlowOutlierDetector
    return {"FlowDensity": FlowDensity, "FlowOutlierDetector": FlowOutlierDetector}


def _create_temp(directory):
    """``(fd, path)`` of a new empty file in ``directory``, created with mode 0666 less the umask (where
    ``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".nflow-np-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"save: cannot create a temporary file in {directory!r}")


def _encode(flow_or_estimator):
    """The arrays of a model file, the spec's JSON among them (as ``__spec__``)."""
    from .estimator import FlowDensity
    encoder = _Encoder()
    if isinstance(flow_or_estimator, FlowDensity):
        estimator, root = _estimator_spec(flow_or_estimator, encoder)
        kind = "estimator"
    else:
        estimator, root = None, encoder.encode(flow_or_estimator, "")
        kind = "flow" if isinstance(flow_or_estimator, TransformedDistribution) else "object"
    from . import __version__
    # the oldest layout that holds the file, so that older releases read what they can
    version = _OPTIMIZER_VERSION if estimator is not None and estimator["optimizer"] is not None else 1
    spec = {"format": FORMAT_NAME, "format_version": version, "nflow_np_version": __version__,
            "kind": kind, "root": root, "estimator": estimator}
    text = json.dumps(spec, allow_nan=False, separators=(",", ":"))
    arrays = dict(encoder.arrays)
    arrays[_SPEC_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return arrays


def save(flow_or_estimator, path):
    """Write a flow, bijector, distribution or fitted ``FlowDensity`` to a ``.npz`` model file.

    Parameters
    ----------
    flow_or_estimator : TransformedDistribution, Bijector, Distribution or FlowDensity
        Every object inside must be of a registered type (all built-in
        bijectors and distributions except ``Inline``, whose functions are
        code). A ``FlowDensity`` must be fitted; its constructor parameters,
        standardization, training history and optimizer state
        (``optimizer_state_``, when it has one) are stored with its flow.
    path : str or os.PathLike
        Written as given (no suffix added), atomically: an interrupted save
        leaves any previous file in place. A file it replaces keeps its
        permissions; a new one gets those the umask leaves. A symlink is
        written through: the file it points to is replaced, the link stays.

    Returns
    -------
    None
    """
    given = as_path(path, "save")
    arrays = _encode(flow_or_estimator)
    # through a symlink to the file it names, so that the link stays a link
    path = os.path.realpath(given)
    if os.path.isdir(path):
        raise ValueError(f"save: {given!r} is a directory; give the path of a file to write")
    fd, tmp = _create_temp(os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)   # a replaced file keeps its permissions
            except FileNotFoundError:
                mode = None   # a new file keeps those the umask left the temporary file
            if mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), mode)
                else:
                    os.chmod(tmp, mode)
            # a file object, so that NumPy does not append ".npz" to the name
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_bytes(flow_or_estimator):
    """The bytes of the model file :func:`save` would write, without touching the disk.

    Parameters
    ----------
    flow_or_estimator : TransformedDistribution, Bijector, Distribution or FlowDensity
        As for :func:`save`.

    Returns
    -------
    bytes
        A ``.npz`` archive; :func:`from_bytes` (or :func:`load`, once written
        to a file) rebuilds the object from it. This is how
        :mod:`nflow_np.dask` ships a model to its workers: as data, never as
        pickled objects.
    """
    buffer = _io.BytesIO()
    np.savez(buffer, **_encode(flow_or_estimator))
    return buffer.getvalue()


# ---------------------------------------------------------------------------- decoding

class _Decoder:
    def __init__(self, arrays, where):
        self.arrays = arrays
        self.used = set()
        self.where = where

    def fail(self, path, message):
        return ValueError(f"{self.where}: {message} (at {path or 'the root'})")

    def take(self, record, path, local):
        if not isinstance(record, dict) or not {"key", "shape", "dtype"} <= set(record):
            raise self.fail(path, f"the spec's record of array {local!r} is malformed: {record!r}")
        key = record["key"]
        if key not in self.arrays:
            raise self.fail(path, f"missing array {key!r}, listed in the spec but absent from the file")
        value = self.arrays[key]
        if record["dtype"] not in _FLOAT_NAMES:
            raise self.fail(path, f"array {key!r} is declared {record['dtype']!r}; expected float32 or float64")
        if value.dtype.name != record["dtype"]:
            raise self.fail(path, f"array {key!r} has dtype {value.dtype} in the file but {record['dtype']} "
                                  f"in the spec")
        if list(value.shape) != list(record["shape"]):
            raise self.fail(path, f"array {key!r} has shape {value.shape} in the file but "
                                  f"{tuple(record['shape'])} in the spec")
        if not np.isfinite(value).all():
            raise self.fail(path, f"array {key!r} holds NaN or infinity")
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))   # written on (or for) a big-endian machine
        self.used.add(key)
        return value

    def decode(self, node, path):
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise self.fail(path, f"expected an object spec with a 'type'; got {str(node)[:80]!r}")
        name = node["type"]
        if name not in REGISTRY:
            raise self.fail(path, f"unknown type {name!r}; this nflow_np knows {', '.join(sorted(REGISTRY))}")
        config, records = node.get("config", {}), node.get("arrays", {})
        if not isinstance(config, dict) or not isinstance(records, dict):
            raise self.fail(path, f"the spec of {name} needs dicts 'config' and 'arrays'")
        arrays = {local: self.take(record, path, local) for local, record in records.items()}
        _, from_spec = REGISTRY[name]
        try:
            return from_spec(config, arrays, lambda child, local: self.decode(child, _join(path, local)))
        except ValueError as exc:
            if str(exc).startswith(self.where):
                raise   # a child's error, already located
            raise self.fail(path, f"cannot rebuild {name}: {exc}") from None
        except KeyError as exc:
            raise self.fail(path, f"cannot rebuild {name}: the spec lacks {exc}") from None
        except (TypeError, IndexError, AttributeError, OverflowError) as exc:
            raise self.fail(path, f"cannot rebuild {name}: {exc}") from None


def read_spec(path):
    """The architecture spec of a model file, checked for format and version, without rebuilding anything.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        The parsed JSON: ``format_version``, ``kind``, ``root`` (nested
        ``{"type", "config", "arrays"}`` objects) and ``estimator`` (with its
        ``optimizer``: ``{"type": "Adam", "state", "arrays"}``, or None).
    """
    return _read(path, arrays=False)[0]


def _history_from_json(data, where):
    from .train.loops import History
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the stored training history must be an object; got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(History)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            continue
        kind = fields[key].type
        if kind in (list, "list"):
            if not isinstance(value, list) or not all(v is None or _is_number(v) for v in value):
                raise ValueError(f"{where}: the stored training history's {key!r} must be a list of numbers; got "
                                 f"{str(value)[:80]!r}")
            kwargs[key] = [np.nan if v is None else float(v) for v in value]
        elif kind in (bool, "bool"):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: the stored training history's {key!r} must be true or false; got "
                                 f"{str(value)[:80]!r}")
            kwargs[key] = value
        elif kind in (int, "int"):
            if not _is_number(value) or int(value) != value:
                raise ValueError(f"{where}: the stored training history's {key!r} must be an integer; got "
                                 f"{str(value)[:80]!r}")
            kwargs[key] = int(value)
        else:
            if not (value is None or _is_number(value)):
                raise ValueError(f"{where}: the stored training history's {key!r} must be a number; got "
                                 f"{str(value)[:80]!r}")
            kwargs[key] = np.nan if value is None else float(value)
    if "averaged" in kwargs:      # stored as numbers, as every list is: 1 where the average won
        kwargs["averaged"] = [bool(v == 1.0) for v in kwargs["averaged"]]
    return History(**kwargs)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optimizer_from_spec(node, flow, decoder, where, version):
    """The stored optimizer state, checked against the spec, the file and the rebuilt flow; None when there is
    none (files written before optimizer state was saved)."""
    if node is None:
        return None
    if version < _OPTIMIZER_VERSION:
        raise ValueError(f"{where}: the spec holds an optimizer state, which model format version {version} does "
                         f"not have (it came with version {_OPTIMIZER_VERSION})")
    if not isinstance(node, dict) or node.get("type") != "Adam":
        raise ValueError(f"{where}: the stored optimizer must be an object of type 'Adam'; got {str(node)[:80]!r}")
    scalars, records = node.get("state"), node.get("arrays")
    if not isinstance(scalars, dict) or set(scalars) & set(_MOMENTS) or not isinstance(records, dict) or \
            set(records) != set(_MOMENTS) or not all(isinstance(r, dict) for r in records.values()):
        raise ValueError(f"{where}: the optimizer spec needs an object 'state' of scalars and objects 'arrays.m' and "
                         f"'arrays.v' of array records; got {str(node)[:120]!r}")
    state = dict(scalars)
    if isinstance(state.get("betas"), list):
        state["betas"] = tuple(state["betas"])
    for moment in _MOMENTS:
        state[moment] = {}
        for name, record in records[moment].items():
            expected = f"optimizer.{moment}.{name}"
            if not isinstance(record, dict) or record.get("key") != expected:
                raise decoder.fail("optimizer", f"the record of moment {moment}[{name!r}] must name array "
                                                f"{expected!r}; got {str(record)[:80]!r}")
            state[moment][name] = decoder.take(record, "optimizer", expected)
    try:
        return _checked_adam_state(flow, state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: the stored optimizer state does not fit the flow ({exc})") from None


def _build_estimator(spec, flow, decoder, where, version=1):
    classes = _estimator_classes()
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) or spec["class"] not in classes:
        raise ValueError(f"{where}: unknown estimator spec {str(spec)[:80]!r}")
    cls = classes[spec["class"]]
    try:
        estimator = cls(**cls._params_from_json(spec["params"]))
        estimator._validated_params()
        n_features = int(spec["n_features_in"])
        mean = decoder.take(spec["arrays"]["mean"], "estimator", "mean")
        scale = decoder.take(spec["arrays"]["scale"], "estimator", "scale")
        context = None
        if "context_mean" in spec["arrays"] or "context_scale" in spec["arrays"]:
            context = (decoder.take(spec["arrays"]["context_mean"], "estimator", "context_mean"),
                       decoder.take(spec["arrays"]["context_scale"], "estimator", "context_scale"))
        offset = spec.get("offset")
        if (offset is not None) != (cls is not classes["FlowDensity"]) or \
                (offset is not None and (not _is_number(offset) or not math.isfinite(offset))):
            raise ValueError(f"a {cls.__name__} {'needs' if offset is None else 'takes no'} finite offset; got "
                             f"{offset!r}")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: the estimator spec is malformed ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise ValueError(f"{where}: the estimator spec is invalid ({exc})") from None
    if not isinstance(flow, TransformedDistribution) or flow.event_shape != (n_features,):
        raise ValueError(f"{where}: the estimator expects {n_features} features but its flow has event shape "
                         f"{getattr(flow, 'event_shape', None)}")
    if mean.shape != (n_features,) or scale.shape != (n_features,) or not np.all(scale > 0):
        raise ValueError(f"{where}: the standardization must be {n_features} means and positive scales; got "
                         f"shapes {mean.shape}, {scale.shape}")
    width = getattr(flow, "context_size", 0)
    if context is None and (width or estimator.conditional) or context is not None and (
            context[0].shape != (width,) or context[1].shape != (width,) or not estimator.conditional or
            not np.all(context[1] > 0)):
        raise ValueError(f"{where}: the estimator's context does not match its flow (conditional="
                         f"{estimator.conditional!r}, a context of {width} column(s); context standardization "
                         f"shapes {None if context is None else (context[0].shape, context[1].shape)})")
    optimizer = _optimizer_from_spec(spec.get("optimizer"), flow, decoder, where, version)
    estimator._set_fitted(flow, mean.astype(np.float64), scale.astype(np.float64),
                          _history_from_json(spec.get("history"), where), optimizer,
                          None if context is None else tuple(c.astype(np.float64) for c in context))
    if offset is not None:
        estimator.offset_ = float(offset)
    return estimator


def load(path):
    """Read a model file written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    TransformedDistribution, Bijector, Distribution or FlowDensity
        Whatever was saved, rebuilt from its constructor arguments and
        stored arrays: ``log_prob`` and seeded ``sample`` match the saved
        object bit for bit. A ``FlowDensity`` comes back with its
        ``optimizer_state_`` (None from a file written without one).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a readable model: truncated or corrupted bytes, a
        different ``format_version``, an unknown type, arrays missing, extra,
        non-finite, or of a shape or dtype that does not match the spec, or
        an optimizer state that does not fit the flow.
    """
    return _load(as_path(path, "load"))


def from_bytes(data, name="<model bytes>"):
    """Rebuild a model from the bytes of a model file (:func:`to_bytes`, or a file's contents).

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        Checked exactly as :func:`load` checks a file: no code from it runs.
    name : str
        What error messages call the model (a file name, say), where
        :func:`load` names the file's path.

    Returns
    -------
    TransformedDistribution, Bijector, Distribution or FlowDensity

    Raises
    ------
    TypeError
        ``data`` is not bytes-like.
    ValueError
        As :func:`load`: the same message for the same bytes, ``name`` in place of the path.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"from_bytes: data must be bytes; got {type(data).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"from_bytes: name must be a str; got {type(name).__name__} {name!r}")
    return _load(name, bytes(data))


def _load(where, data=None):
    spec, arrays, extra = _read(where, data=data)
    decoder = _Decoder(arrays, where)
    try:
        root = decoder.decode(spec["root"], "flow" if spec.get("estimator") else "")
        result = root
        if spec.get("estimator") is not None:
            result = _build_estimator(spec["estimator"], root, decoder, where, spec["format_version"])
    except RecursionError:
        raise ValueError(f"{where}: the spec nests objects too deeply") from None
    unused = sorted(set(arrays) - decoder.used | set(extra))
    if unused:
        raise ValueError(f"{where}: arrays {unused} are in the file but not in the spec (a hand-edited file?)")
    return result
