"""Model-file fuzzing: truncations, bit and byte flips, mutated specs and crafted members.

For every damaged file ``io.load`` either returns a model whose log-density is finite (equal to the original's
where the damage touched nothing it reads) or raises ``ValueError`` (``FileNotFoundError`` for a path that names
no file): no other exception leaks, and refusing a crafted file allocates little more than the file holds.
Every case is drawn from fixed seeds, so a failure reproduces.
"""

import copy
import json
import os
import struct
import tracemalloc
import zipfile
from io import BytesIO

import numpy as np
import pytest

import nflow_np
from nflow_np import cli, datasets, flows, io
from nflow_np.estimator import FlowDensity, FlowOutlierDetector

MiB = 2 ** 20


@pytest.fixture(autouse=True)
def numpy_backend():
    # the compiled backend would spend seconds compiling each tiny flow; these tests are about reading files
    with nflow_np.backend("numpy"):
        yield


def _objects():
    estimator = FlowDensity(n_layers=1, hidden=(3,), epochs=1, batch_size=32, random_state=0)
    estimator.fit(datasets.load("two-moons", 64, rng=0))
    points, moon = datasets.two_moons(64, rng=0, return_labels=True)
    detector = FlowOutlierDetector(conditional=True, n_layers=1, hidden=(3,), epochs=1, batch_size=32, random_state=0)
    detector.fit(points, np.eye(2)[moon])
    return {
        "realnvp": flows.RealNVP(2, n_layers=2, hidden=(3,), rng=0),
        "nsf": flows.NSF(2, n_layers=2, bins=3, hidden=(3,), rng=1),
        "maf-batchnorm": flows.MAF(2, n_layers=2, hidden=(3,), batch_norm=True, rng=2),
        "estimator": estimator,
        "conditional-detector": detector,
    }


KINDS = ["realnvp", "nsf", "maf-batchnorm", "estimator", "conditional-detector"]
X = np.random.default_rng(0).normal(size=(5, 2))


def _log_prob(model):
    flow = model.flow_ if isinstance(model, FlowDensity) else model
    context = getattr(flow, "context_size", 0)
    return flow.log_prob(X, context=np.ones((len(X), context)) if context else None)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """``{kind: (bytes of the saved file, log_prob of the original on X)}``."""
    with nflow_np.backend("numpy"):
        out = {}
        directory = tmp_path_factory.mktemp("originals")
        for kind, obj in _objects().items():
            path = directory / f"{kind}.npz"
            io.save(obj, path)
            out[kind] = (path.read_bytes(), _log_prob(obj))
    return out


def _outcome(path, case, reference=None, allow_missing=False):
    """``"loaded"``, ``"equal"`` or ``"refused"``; fails the test on any other exception or a non-finite density."""
    try:
        model = io.load(path)
    except ValueError as exc:
        assert str(exc), case
        return "refused"
    except FileNotFoundError:
        if not allow_missing:
            raise
        return "refused"
    except Exception as exc:   # noqa: BLE001 - the point: nothing but ValueError may leak
        pytest.fail(f"{case}: io.load leaked {type(exc).__name__}: {exc}")
    with np.errstate(all="ignore"):
        lp = _log_prob(model)
    assert np.all(np.isfinite(lp)), f"{case}: loaded, but log_prob is {lp}"
    return "equal" if reference is not None and np.array_equal(lp, reference) else "loaded"


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _bounded_outcome(path, case, **kwargs):
    """``_outcome`` under tracemalloc: the peak must stay within a small multiple of the file size."""
    result = []
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    peak = _peak(lambda: result.append(_outcome(path, case, **kwargs)))
    assert peak < 8 * size + 16 * MiB, f"{case}: load peaked at {peak / MiB:.1f} MiB for a {size}-byte file"
    return result[0]


def _boundaries(data):
    """Offsets where the zip's structures start and end: local headers, member data, central directory, end."""
    with zipfile.ZipFile(BytesIO(data)) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    points = {0, 4, 30, cd_start, len(data) - 22, len(data) - 1}
    for info in infos:
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        points |= {info.header_offset, start, start + 10, start + info.compress_size}
    return sorted(p for p in points if 0 <= p < len(data))


# ---------------------------------------------------------------------------- truncations

@pytest.mark.parametrize("kind", KINDS)
def test_truncations_are_refused(kind, originals, tmp_path):
    data, _ = originals[kind]
    cuts = set(_boundaries(data))
    cuts |= {p + d for p in list(cuts) for d in (-1, 1)}
    cuts |= set(np.linspace(0, len(data) - 1, 25).astype(int).tolist())
    cuts = sorted(c for c in cuts if 0 <= c < len(data))
    assert len(cuts) > 40
    path = tmp_path / "cut.npz"
    for cut in cuts:
        path.write_bytes(data[:cut])
        # the end of central directory record is the last thing in the file: any cut loses it
        assert _bounded_outcome(path, f"{kind} cut at {cut}") == "refused"


# ---------------------------------------------------------------------------- bit flips and byte changes

def _regions(data):
    """``{name: (start, stop)}``: the zip's headers, the spec's JSON bytes and the arrays' data."""
    with zipfile.ZipFile(BytesIO(data)) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    spec = next(i for i in infos if i.filename == "__spec__.npy")
    spec_at = data.index(b"{", spec.header_offset)
    first = infos[0].header_offset
    return {"headers": [(first, first + 30), (cd_start, len(data))],
            "spec": [(spec_at, spec_at + spec.file_size - 128)],
            "arrays": [(i.header_offset, i.header_offset + 30 + len(i.filename) + i.compress_size)
                       for i in infos if i.filename != "__spec__.npy"]}


@pytest.mark.parametrize("kind", KINDS)
def test_bit_and_byte_flips(kind, originals, tmp_path):
    data, reference = originals[kind]
    rng = np.random.default_rng([7, KINDS.index(kind)])
    path = tmp_path / "flipped.npz"
    counts = {"refused": 0, "loaded": 0, "equal": 0}
    for region, spans in _regions(data).items():
        for i in range(40):
            start, stop = spans[rng.integers(len(spans))]
            at = int(rng.integers(start, min(stop, len(data))))
            damaged = bytearray(data)
            if i % 4 == 3:
                damaged[at] = (damaged[at] + int(rng.integers(1, 256))) % 256   # a whole byte changed
            else:
                damaged[at] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(damaged))
            counts[_bounded_outcome(path, f"{kind} {region} flip at {at}", reference=reference)] += 1
    # the CRCs catch damage to a member's bytes: most flips are refused, none crashes
    assert counts["refused"] > sum(counts.values()) // 2, counts


# ---------------------------------------------------------------------------- mutated specs (valid zip, valid CRCs)

def _contents(data, tmp_path):
    path = tmp_path / "source.npz"
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__spec__").tobytes().decode("utf-8")), arrays


def _write(path, spec, arrays, text=None):
    arrays = dict(arrays)
    text = json.dumps(spec) if text is None else text
    arrays["__spec__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _paths(node, prefix=()):
    if prefix:
        yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


REPLACEMENTS = [None, True, 0, -1, 1, 3, 2.5, 10 ** 30, 1e308, -1e308, 5e-324, "", "x", "float16", "float32",
                "relu", [], {}, [1], [-1], [10 ** 9], [[]], {"type": "Chain"},
                {"key": "bijector.0.net.w0", "shape": [10 ** 13], "dtype": "float64"}]


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_specs(kind, originals, tmp_path):
    data, reference = originals[kind]
    spec, arrays = _contents(data, tmp_path)
    paths = list(_paths(spec))
    rng = np.random.default_rng([11, KINDS.index(kind)])
    path = tmp_path / "mutated.npz"
    counts = {"refused": 0, "loaded": 0, "equal": 0}
    for _ in range(60):
        mutated = copy.deepcopy(spec)
        where = paths[rng.integers(len(paths))]
        parent = mutated
        for key in where[:-1]:
            parent = parent[key]
        if rng.random() < 0.15:
            del parent[where[-1]]
        else:
            parent[where[-1]] = copy.deepcopy(REPLACEMENTS[rng.integers(len(REPLACEMENTS))])
        _write(path, mutated, arrays)
        counts[_bounded_outcome(path, f"{kind}: spec at {where} mutated", reference=reference)] += 1
    text = json.dumps(spec)
    for _ in range(20):   # text-level damage that keeps the CRC valid: the JSON parser and UTF-8 see it
        at = int(rng.integers(len(text)))
        damaged = text[:at] + chr(int(rng.integers(1, 0x2FF))) + text[at + 1:]
        _write(path, None, arrays, text=damaged)
        counts[_bounded_outcome(path, f"{kind}: spec character {at} changed", reference=reference)] += 1
    assert counts["refused"] > 0, counts


# ---------------------------------------------------------------------------- crafted members

UNPICKLED = []


class _Tripwire:
    """Records being unpickled; a model file holding one must be refused unread."""

    def __reduce__(self):
        return (_Tripwire._unpickled, ())

    @staticmethod
    def _unpickled():
        UNPICKLED.append(True)
        return _Tripwire()


def _npy(array):
    buf = BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape, descr="<f8", version=(1, 0)):
    buf = BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _rezip(path, members, compression=zipfile.ZIP_STORED):
    """Rewrite ``path`` as a zip of ``members``: (name, bytes) pairs, duplicates allowed."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, payload in members:
            with pytest.warns(UserWarning) if name in zf.NameToInfo else _no_warning():
                zf.writestr(name, payload)
    return path


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _members(data):
    with zipfile.ZipFile(BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _patch_sizes(path, name, size):
    """Make the zip's local and central headers of stored member ``name`` claim ``size`` bytes, and its ``.npy``
    header a uint8 shape that fills them: a member far longer than the file, honest-looking everywhere else."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        cd_start = zf.start_dir
    packed = struct.pack("<II", size, size)
    data[info.header_offset + 18:info.header_offset + 26] = packed
    at = data.index(b"PK\x01\x02" + bytes(data[cd_start + 4:cd_start + 8]), cd_start)
    while data[at + 46:at + 46 + len(name)] != name.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 20:at + 28] = packed
    path.write_bytes(bytes(data))
    return path


def _crafted(kind, data, tmp_path):
    """``{case: path}`` of hand-crafted hostile files built from the saved ``data``."""
    spec, arrays = _contents(data, tmp_path)
    members = _members(data)
    first = next(name for name, _ in members if name != "__spec__.npy")
    files = {}

    def new(case):
        return tmp_path / f"{case}.npz"

    # huge declared shapes in .npy headers (listed members and the spec itself), honest zip sizes
    for case, member, header in [("huge-listed-shape", first, _npy_header((10 ** 13,))),
                                 ("huge-spec-shape", "__spec__.npy", _npy_header((10 ** 13,), "|u1")),
                                 ("negative-shape", first, _npy_header((-5, 3))),
                                 ("huge-header-v2", first, _npy_header((10 ** 12, 10 ** 6), version=(2, 0)))]:
        files[case] = _rezip(new(case), [(n, header + b"\0" * 64 if n == member else p) for n, p in members])
    # a npy header length field claiming 4 GiB (format 2.0 stores it in 4 bytes)
    bogus = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 32 - 1) + b"{"
    files["header-length-4GiB"] = _rezip(new("header-length-4GiB"),
                                         [(n, bogus if n == first else p) for n, p in members])
    # a stored member whose zip headers claim 2 GB (and whose .npy header agrees): the file holds a few KiB
    for case, member in [("stored-2GB-spec", "__spec__.npy"), ("stored-2GB-array", first)]:
        path = _rezip(new(case), members)
        header = _npy_header((2 * 10 ** 9,), "|u1")
        header = _npy_header((2 * 10 ** 9 - len(header),), "|u1")
        _rezip(path, [(n, header + p[:32] if n == member else p) for n, p in members])
        files[case] = _patch_sizes(path, member, 2 * 10 ** 9)
    # a deflated member whose directory claims 4e9 bytes from a few hundred
    files["deflate-ratio"] = _rezip(new("deflate-ratio"), members, compression=zipfile.ZIP_DEFLATED)
    files["deflate-ratio"] = _patch_sizes(files["deflate-ratio"], first, 4 * 10 ** 9)
    # deep nesting: Chains and Inverts thousands deep (valid JSON within the parser's limits), dicts 100000 deep
    identity = '{"type":"Identity","config":{"name":"id","dtype":null},"arrays":{}}'
    chain = '{"type":"Invert","config":{"name":"inv","bijector":' * 3000 + identity + '},"arrays":{}}' * 3000
    deep = copy.deepcopy(spec)
    deep["root"]["config"]["bijector"] = "@chain@"
    files["invert-3000-deep"] = _write(new("invert-3000-deep"), None, arrays,
                                       text=json.dumps(deep).replace('"@chain@"', chain))
    text = json.dumps(spec).replace('"config":', '"config":' + '{"a":' * 100_000 + "1" + "}" * 100_000 + ',"c":', 1)
    files["dicts-100000-deep"] = _write(new("dicts-100000-deep"), None, arrays, text=text)
    # arrays the spec lists that the file lacks; a record naming the spec member itself
    files["absent-array"] = _write(new("absent-array"), spec, {k: v for k, v in arrays.items() if k not in first})
    aliased = copy.deepcopy(spec)
    next(r for r in _records(aliased))["key"] = "__spec__"
    files["record-names-spec"] = _write(new("record-names-spec"), aliased, arrays)
    # extra members: an array, a text file, a directory entry
    files["extra-array"] = _rezip(new("extra-array"), members + [("extra.npy", _npy(np.zeros(3)))])
    files["extra-text"] = _rezip(new("extra-text"), members + [("notes.txt", b"hello")])
    # pickled object arrays, as an extra member, in place of an array, and as the spec; never unpickled
    pickled = _npy(np.array([_Tripwire()], dtype=object))
    files["pickle-extra"] = _rezip(new("pickle-extra"), members + [("payload.npy", pickled)])
    files["pickle-array"] = _rezip(new("pickle-array"), [(n, pickled if n == first else p) for n, p in members])
    files["pickle-spec"] = _rezip(new("pickle-spec"), [(n, pickled if n == "__spec__.npy" else p)
                                                       for n, p in members])
    # duplicate member names: a second spec, a second copy of an array with other values
    other = _npy(np.ones_like(arrays[first[:-4]]))
    files["duplicate-array"] = _rezip(new("duplicate-array"), members + [(first, other)])
    files["duplicate-spec"] = _rezip(new("duplicate-spec"), members + [m for m in members if m[0] == "__spec__.npy"])
    # a spec that is not an object, or not UTF-8
    files["spec-is-list"] = _write(new("spec-is-list"), None, arrays, text="[1, 2]")
    arrays_bad = dict(arrays, __spec__=np.frombuffer(b"\xff\xfe{}", dtype=np.uint8))
    with open(new("spec-not-utf8"), "wb") as fh:
        np.savez(fh, **arrays_bad)
    files["spec-not-utf8"] = new("spec-not-utf8")
    # not model files at all
    new("empty").write_bytes(b"")
    files["empty"] = new("empty")
    new("not-zip").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    files["not-zip"] = new("not-zip")
    new("zip-magic-only").write_bytes(b"PK\x05\x06" + bytes(18))
    files["zip-magic-only"] = new("zip-magic-only")
    return files


def _records(spec):
    stack = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if {"key", "shape", "dtype"} <= set(node):
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


CRAFTED = ["huge-listed-shape", "huge-spec-shape", "negative-shape", "huge-header-v2", "header-length-4GiB",
           "stored-2GB-spec", "stored-2GB-array", "deflate-ratio", "invert-3000-deep", "dicts-100000-deep",
           "absent-array", "record-names-spec", "extra-array", "extra-text", "pickle-extra", "pickle-array",
           "pickle-spec", "duplicate-array", "duplicate-spec", "spec-is-list", "spec-not-utf8", "empty", "not-zip",
           "zip-magic-only"]


@pytest.fixture(scope="module")
def crafted(originals, tmp_path_factory):
    with nflow_np.backend("numpy"):
        return {kind: _crafted(kind, originals[kind][0], tmp_path_factory.mktemp(kind))
                for kind in ("realnvp", "estimator")}


@pytest.mark.parametrize("kind", ["realnvp", "estimator"])
@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_files_are_refused_within_bounded_memory(kind, case, crafted):
    path = crafted[kind][case]
    assert sorted(crafted[kind]) == sorted(CRAFTED)
    del UNPICKLED[:]
    assert _bounded_outcome(path, f"{kind}: {case}") == "refused"
    try:
        io.read_spec(path)   # reads the spec alone: some of these it may accept, none may crash it
    except ValueError:
        pass
    assert not UNPICKLED, f"{case}: a pickled member was unpickled"


def test_paths_that_are_not_files(tmp_path):
    assert _outcome(tmp_path, "a directory") == "refused"
    assert _outcome(tmp_path / "absent.npz", "a missing file", allow_missing=True) == "refused"
    if os.name == "posix":
        loop = tmp_path / "loop.npz"
        loop.symlink_to(loop)
        assert _outcome(loop, "a symlink loop", allow_missing=True) == "refused"


# ---------------------------------------------------------------------------- the command line on corrupt files

@pytest.mark.parametrize("case", ["huge-listed-shape", "stored-2GB-spec", "invert-3000-deep", "pickle-spec",
                                  "duplicate-spec", "empty"])
def test_info_reports_a_corrupt_file_in_one_line(case, crafted, capsys):
    status = cli.main(["info", str(crafted["realnvp"][case])])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("nflow-np: error: "), err
    assert "Traceback" not in err and out == ""


def test_info_reports_a_truncated_file_in_one_line(originals, tmp_path, capsys):
    data, _ = originals["nsf"]
    path = tmp_path / "cut.npz"
    path.write_bytes(data[:len(data) // 3])
    status = cli.main(["info", str(path)])
    _, err = capsys.readouterr()
    assert status == 2 and len(err.strip().splitlines()) == 1 and "damaged" in err


@pytest.mark.parametrize("bound", [1e308, 3e38, 1e39])
def test_spline_bound_too_wide_for_a_finite_density_is_refused(bound, originals, tmp_path):
    # a hand-edited bound whose interval width overflows would load, then give NaN for every point
    spec, arrays = _contents(originals["nsf"][0], tmp_path)
    layer = next(n for n in spec["root"]["config"]["bijector"]["config"]["bijectors"] if n["type"] == "SplineCoupling")
    layer["config"]["bound"] = bound
    path = _write(tmp_path / "wide.npz", spec, arrays)
    assert _bounded_outcome(path, f"nsf: bound {bound}") == "refused"
    with pytest.raises(ValueError, match="bound must be at most"):
        io.load(path)
