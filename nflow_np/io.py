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
import json
import math
import os
import secrets
import stat
import zipfile
import zlib

import numpy as np

from ._io_registry import _NAMES, REGISTRY, register
from .bijectors import Inline
from .distributions import TransformedDistribution

__all__ = ["FORMAT_VERSION", "REGISTRY", "register", "save", "load", "read_spec"]

FORMAT_NAME = "nflow_np"
FORMAT_VERSION = 2
"""The newest file layout, written when a file needs it (an estimator with optimizer state); :func:`load` reads
versions 1 and 2 and refuses any other."""
_READABLE_VERSIONS = (1, 2)
_OPTIMIZER_VERSION = 2   # the first version with optimizer state
_MOMENTS = ("m", "v")
_OPTIMIZER_SCALARS = ("lr", "steps", "betas", "eps", "weight_decay", "clip_norm")

_SPEC_KEY = "__spec__"
_FLOAT_NAMES = ("float32", "float64")


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
    from .estimator import FlowDensity
    params = FlowDensity._json_params(estimator.get_params())
    if not hasattr(estimator, "flow_"):
        raise ValueError("save: this FlowDensity is not fitted; fit it before saving")
    spec = {"class": "FlowDensity", "params": params, "n_features_in": int(estimator.n_features_in_),
            "history": None if getattr(estimator, "history_", None) is None else _history_to_json(estimator.history_),
            "arrays": {"mean": encoder.add("estimator.mean", np.asarray(estimator.mean_, np.float64), "FlowDensity"),
                       "scale": encoder.add("estimator.scale", np.asarray(estimator.scale_, np.float64),
                                            "FlowDensity")},
            "optimizer": _optimizer_spec(estimator, encoder)}
    return spec, encoder.encode(estimator.flow_, "flow")


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
    # through a symlink to the file it names, so that the link stays a link
    path = os.path.realpath(os.fspath(path))
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


# a deflated stream expands at most about 1032-fold; a member declaring more is damaged (or a zip bomb)
_MAX_DEFLATE_RATIO = 1100


def _open(path):
    """The opened ``NpzFile`` of a model file (nothing read yet but the zip directory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    # name the common mistakes before NumPy does (it would talk about pickles)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path}: holds a single array (a .npy file), not an nflow_np model (.npz)")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path}: not an nflow_np model file (a model is a .npz zip archive; this file "
                         f"{'is empty' if not magic else 'starts with ' + repr(magic)})")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{path}: not an nflow_np model file, or a damaged one ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array (a .npy file), not an nflow_np model (.npz)")
    # save writes stored or deflated members only; any other method is a damaged (or foreign) header
    methods = {info.compress_type for info in npz.zip.infolist()} - {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    if methods:
        npz.close()
        raise ValueError(f"{path}: the model file is damaged: its zip directory names compression method(s) "
                         f"{sorted(methods)}, where model files are stored or deflated")
    return npz


def _member_header(zf, info, where):
    """``(shape, dtype)`` of one ``.npy`` member, from its header alone, checked against the zip directory's sizes
    so that reading the member allocates no more than the file can hold."""
    name = info.filename
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"member {name!r} has .npy format version {version}, which model files never use")
        header_size = fp.tell()
    if dtype.hasobject:
        raise ValueError(f"{where}: holds a pickled object array ({name!r}); model files never do, and loading one "
                         f"could run code, so it is refused")
    size = header_size + math.prod(shape) * dtype.itemsize
    if size != info.file_size:
        raise ValueError(f"member {name!r} declares shape {shape} of {dtype} ({size} bytes with its header), but "
                         f"the zip directory says {info.file_size} bytes")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size or \
            info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise ValueError(f"member {name!r} declares {info.file_size} bytes from {info.compress_size} stored, more "
                         f"than its compression can hold")
    return shape, dtype


def _array_records(spec):
    """``{key: record}`` of every array record (a dict with a string ``key``, a list ``shape`` and a string
    ``dtype``) anywhere in ``spec``; walked without recursion, however deep the spec nests."""
    records, stack = {}, [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("key"), str) and isinstance(node.get("shape"), list) and \
                    isinstance(node.get("dtype"), str):
                records.setdefault(node["key"], node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return records


def _read(path, arrays=True):
    """``(spec, arrays, extra)`` of a model file, every low-level failure turned into one ``ValueError``.

    The spec is read first; every other member is then checked against it from its header and the zip directory
    alone (members the spec does not name are refused unread, declared shapes and dtypes must match the spec's),
    so that a damaged or hostile file is refused before its arrays are allocated; ``extra`` names the members
    left unread because the spec does not list them. With ``arrays=False`` only the
    spec is read (and ``{}`` stands for the arrays).
    """
    where = os.fspath(path)
    npz = _open(path)
    try:
        with npz:
            headers = {}
            for info in npz.zip.infolist():
                if info.filename.endswith("/"):
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                headers[key] = _member_header(npz.zip, info, where) if info.filename.endswith(".npy") else None
            raw = None
            if headers.get(_SPEC_KEY) is not None:
                shape, dtype = headers[_SPEC_KEY]
                if dtype != np.uint8 or len(shape) != 1:
                    raise ValueError(f"{where}: {_SPEC_KEY} must be a 1-D uint8 array of JSON; got {dtype} {shape}")
                raw = npz[_SPEC_KEY]
            spec = _parse_spec(raw, where)
            if not arrays:
                return spec, {}, []
            records = _array_records(spec)
            # members the spec does not name are never read; load refuses them once the spec has been decoded
            # (a spec that lost a record is better told by what the decoder finds missing)
            extra = sorted(set(headers) - set(records) - {_SPEC_KEY})
            listed = [key for key in headers if key in records]
            for key in listed:
                record, header = records[key], headers[key]
                if header is None:
                    raise ValueError(f"{where}: member {key!r} is not a .npy array")
                shape, dtype = header
                if record["dtype"] not in _FLOAT_NAMES:
                    raise ValueError(f"{where}: array {key!r} is declared {record['dtype']!r}; expected float32 or "
                                     f"float64")
                if dtype.name != record["dtype"]:
                    raise ValueError(f"{where}: array {key!r} has dtype {dtype} in the file but {record['dtype']} "
                                     f"in the spec")
                if list(shape) != record["shape"]:
                    raise ValueError(f"{where}: array {key!r} has shape {shape} in the file but "
                                     f"{tuple(record['shape'])} in the spec")
            return spec, {key: npz[key] for key in listed}, extra
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        if "allow_pickle" in str(exc):
            raise ValueError(f"{where}: holds a pickled object array; model files never do, and loading one could "
                             f"run code, so it is refused") from None
        raise ValueError(f"{where}: the model file is damaged (truncated or corrupted bytes): {exc}") from None
    except (OSError, EOFError, KeyError, RuntimeError, zlib.error, zipfile.BadZipFile, OverflowError) as exc:
        raise ValueError(f"{where}: the model file is damaged (truncated or corrupted bytes): {exc}") from None


def _parse_spec(raw, where):
    if raw is None:
        raise ValueError(f"{where}: no {_SPEC_KEY} array; this .npz was not written by nflow_np.io.save")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{where}: {_SPEC_KEY} must be a 1-D uint8 array of JSON; got {raw.dtype} {raw.shape}")
    try:
        spec = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{where}: the architecture spec is not valid UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{where}: the architecture spec nests too deeply to be a model") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: the spec does not describe an nflow_np model (format "
                         f"{spec.get('format') if isinstance(spec, dict) else None!r})")
    version = spec.get("format_version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise ValueError(f"{where}: written with model format version {version!r}; this nflow_np reads versions "
                         f"{' and '.join(map(str, _READABLE_VERSIONS))}"
                         + (" (upgrade nflow_np)" if type(version) is int and version > FORMAT_VERSION else ""))
    if "root" not in spec:
        raise ValueError(f"{where}: the spec has no 'root' object")
    return spec


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
    known = {f.name for f in dataclasses.fields(History)}
    kwargs = {}
    for key, value in data.items():
        if key in known:
            kwargs[key] = [np.nan if v is None else float(v) for v in value] if isinstance(value, list) else \
                (np.nan if value is None else value)
    try:
        return History(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: the stored training history is malformed ({exc})") from None


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
    from .estimator import FlowDensity
    if not isinstance(spec, dict) or spec.get("class") != "FlowDensity":
        raise ValueError(f"{where}: unknown estimator spec {str(spec)[:80]!r}")
    try:
        estimator = FlowDensity(**FlowDensity._params_from_json(spec["params"]))
        estimator._validated_params()
        n_features = int(spec["n_features_in"])
        mean = decoder.take(spec["arrays"]["mean"], "estimator", "mean")
        scale = decoder.take(spec["arrays"]["scale"], "estimator", "scale")
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
    optimizer = _optimizer_from_spec(spec.get("optimizer"), flow, decoder, where, version)
    estimator._set_fitted(flow, mean.astype(np.float64), scale.astype(np.float64),
                          _history_from_json(spec.get("history"), where), optimizer)
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
    where = os.fspath(path)
    spec, arrays, extra = _read(path)
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
