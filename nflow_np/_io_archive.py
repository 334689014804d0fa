"""Reading a model file's archive without trusting it: the zip directory, each member's ``.npy`` header checked
against the directory and the spec before anything is read, and the spec's JSON (:mod:`nflow_np.io`)."""

import io
import json
import math
import os
import zipfile
import zlib

import numpy as np

FORMAT_NAME = "nflow_np"
FORMAT_VERSION = 2
"""The newest file layout, written when a file needs it (an estimator with optimizer state); :func:`load` reads
versions 1 and 2 and refuses any other."""
_READABLE_VERSIONS = (1, 2)

_SPEC_KEY = "__spec__"
_FLOAT_NAMES = ("float32", "float64")

# a deflated stream expands at most about 1032-fold; a member declaring more is damaged (or a zip bomb)
_MAX_DEFLATE_RATIO = 1100


def _open(path, data=None):
    """The opened ``NpzFile`` of a model file (nothing read yet but the zip directory); ``data``: the file's bytes,
    read from memory instead of ``path`` (which then only names the model in messages)."""
    if data is None:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"load: no such file: {path!r}")
        try:
            with open(path, "rb") as fh:
                magic = fh.read(6)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
        source = path
    else:
        magic = bytes(data[:6])
        source = io.BytesIO(data)
    # name the common mistakes before NumPy does (it would talk about pickles)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path}: holds a single array (a .npy file), not an nflow_np model (.npz)")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path}: not an nflow_np model file (a model is a .npz zip archive; this file "
                         f"{'is empty' if not magic else 'starts with ' + repr(magic)})")
    try:
        npz = np.load(source, allow_pickle=False)
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


def _member_header(zf, info, where, archive_size):
    """``(shape, dtype)`` of one ``.npy`` member, from its header alone, checked against the zip directory's sizes
    (and those against the archive's own size) so that reading the member allocates no more than the file can
    hold."""
    name = info.filename
    if info.header_offset + info.compress_size > archive_size:
        raise ValueError(f"member {name!r} declares {info.compress_size} stored bytes from offset "
                         f"{info.header_offset}, past the end of the {archive_size}-byte file")
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


def as_path(path, where):
    """``path`` as a str, or a TypeError naming ``where`` when it is not a path."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{where}: path must be a str or os.PathLike; got {type(path).__name__} {path!r}")
    return os.fsdecode(path)


def _read(path, arrays=True, data=None):
    """``(spec, arrays, extra)`` of a model file, every low-level failure turned into one ``ValueError``.

    The spec is read first; every other member is then checked against it from its header and the zip directory
    alone (members the spec does not name are refused unread, declared shapes and dtypes must match the spec's),
    so that a damaged or hostile file is refused before its arrays are allocated; ``extra`` names the members
    left unread because the spec does not list them. With ``arrays=False`` only the
    spec is read (and ``{}`` stands for the arrays). ``data``: the file's bytes, read from memory (``path`` then
    only names the model in messages).
    """
    where = as_path(path, "load")
    npz = _open(where, data)
    try:
        with npz:
            headers = {}
            archive_size = os.path.getsize(path) if data is None else len(data)
            for info in npz.zip.infolist():
                if info.filename.endswith("/"):
                    continue
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key in headers:
                    # NumPy would read the last of the two, other tools the first: the file is ambiguous
                    raise ValueError(f"{where}: member {info.filename!r} appears twice in the zip directory")
                headers[key] = _member_header(npz.zip, info, where, archive_size) \
                    if info.filename.endswith(".npy") else None
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
