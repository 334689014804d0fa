"""Compiling the runner's entries on every core: helper processes that fill Numba's disk cache.

Numba compiles on one thread, holding the GIL, so a first compiled call on a
cold cache leaves the other cores idle. When a flow needs several entries
that were never compiled here (see :mod:`.compiled`), :func:`compile_entries`
compiles its share of them in this process while helper processes (``python
-m nflow_np.kernels.warm``) compile the rest into the same on-disk cache; this
process then loads theirs from disk. :func:`prefetch` starts a helper that
compiles what a flow will probably need next (the sampling entries and loops
while a fit trains) without waiting for it.

A manifest beside Numba's cache (``nflow_np-<hash>.json``, the hash taken over
the kernels' sources and Numba's version) lists the entries compiled so far, so
a warm process starts no helper. Helpers run only where the cache directory
can be written; ``NFLOW_NP_COMPILE_WORKERS=0`` turns them off (``N`` sets the
number of helper processes, by default one per extra core). A helper that
fails or is off only costs the time to compile its share here instead.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import warnings

__all__ = ["compile_entries", "prefetch", "uncompiled", "workers", "check_cache"]

_lock = threading.Lock()
_background = []          # (Popen, keys) of prefetching helpers not yet waited for
_WAIT = 600.0             # seconds a helper may take before this process compiles its share itself


def workers():
    """Helper processes to use: ``NFLOW_NP_COMPILE_WORKERS``, else one per core beyond the first."""
    setting = os.environ.get("NFLOW_NP_COMPILE_WORKERS")
    if getattr(sys, "frozen", False):     # a bundled application: sys.executable is not a Python to start
        return 0
    if setting is not None:
        try:
            count = int(setting)
        except ValueError:
            count = -1
        if count < 0:
            warnings.warn(f"NFLOW_NP_COMPILE_WORKERS must be a non-negative int; got {setting!r}: compiling in this "
                          f"process only", RuntimeWarning, stacklevel=2)
            return 0
        return count
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def _kernel_sources():
    """The CPU kernels' sources: this folder's and the transforms' (the frames' entries compile theirs in)."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for folder in (here, os.path.join(here, "transforms")):
        found += [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py")]
    return sorted(found)


_manifest_path_cache = []


def _cache_folder(here=None):
    """Where Numba caches the machine code of the kernels in ``here`` (this folder by default): beside them, or
    under ``NUMBA_CACHE_DIR`` in the sub-folder Numba names after the source folder (its name and the SHA-1 of
    its path)."""
    here = here or os.path.dirname(os.path.abspath(__file__))
    root = os.environ.get("NUMBA_CACHE_DIR")
    if not root:
        return os.path.join(here, "__pycache__")
    return os.path.join(root, f"{os.path.basename(here)}_{hashlib.sha1(here.encode()).hexdigest()}")


def _forget_stale(folder, manifest):
    """The kernels' sources changed since the cache was written: drop its machine code and old manifests.

    Numba checks a cached function against its own file only, so an entry whose
    kernels changed in another file would load stale code. The transforms'
    cache goes too: their functions call the shared scalar math.
    """
    transforms = _cache_folder(os.path.join(os.path.dirname(os.path.abspath(__file__)), "transforms"))
    for where in (folder, transforms):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            stale = name.endswith((".nbi", ".nbc")) or (name.startswith("nflow_np-") and name.endswith(".json"))
            if stale and name != os.path.basename(manifest):
                try:
                    os.remove(os.path.join(where, name))
                except OSError:
                    pass


def _manifest_path():
    """The manifest's path, or None where the cache folder cannot be written."""
    if _manifest_path_cache:
        return _manifest_path_cache[0]
    import numba
    digest = hashlib.sha1(numba.__version__.encode())
    for path in _kernel_sources():
        with open(path, "rb") as f:
            digest.update(f.read())
    folder = _cache_folder()
    path = os.path.join(folder, f"nflow_np-{digest.hexdigest()[:16]}.json")
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):
            path = None
        elif not os.path.exists(path):
            _forget_stale(folder, path)
            with open(path, "w") as f:
                f.write("[]")
    except OSError:
        path = None
    _manifest_path_cache.append(path)
    return path


def check_cache():
    """Drop the kernels' cached machine code if their sources changed since it was written (once per process)."""
    _manifest_path()


def _encode(key):
    return f"{key[0]}:{key[1]}:{key[2]}"


def _compiled_before():
    path = _manifest_path()
    if path is None:
        return set()
    try:
        with open(path) as f:
            return set(json.load(f))
    except (OSError, ValueError):
        return set()


def _record(keys):
    path = _manifest_path()
    if path is None:
        return
    with _lock:
        known = _compiled_before() | {_encode(k) for k in keys}
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(sorted(known), f)
            os.replace(tmp, path)
        except OSError:
            pass


def _start(keys):
    """A helper process compiling ``keys`` (``(op, pass, dtype name)``; pass -1: the loops of that dtype)."""
    env = dict(os.environ, NFLOW_NP_COMPILE_WORKERS="0")
    return subprocess.Popen([sys.executable, "-m", "nflow_np.kernels.warm", json.dumps([list(k) for k in keys])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _wait(process):
    try:
        return process.wait(timeout=_WAIT) == 0
    except subprocess.TimeoutExpired:
        process.kill()
        return False


def _wait_for_background(keys):
    """Wait for a prefetching helper that is compiling any of ``keys``."""
    with _lock:
        pending = [(p, k) for p, k in _background if set(k) & set(keys)]
    for process, theirs in pending:
        _wait(process)
        with _lock:
            if (process, theirs) in _background:
                _background.remove((process, theirs))


# Rough compile seconds on one core (float32 RealNVP-sized entries, measured on 2 cores). Keys that share
# callees (the passes of one entry name share its transform and frame code; the loops share the runner's
# helpers) compile much faster in one process than in two, each of which would compile the shared code
# again: keys are dealt in families. The first key of a family pays for the shared code. The networks'
# forward and backward passes (row-major, or by unit) share almost nothing, so each is a family of its own.
_FIRST = {2: 3.0, 0: 2.5, 1: 2.5, -1: 4.5}     # by pass (backward, density, sampling; -1: a loop)
_MORE = {2: 2.0, 0: 1.5, 1: 0.8, -1: 0.7}
_STARTUP = 0.6


def _family(key):
    """Keys compiled together: an entry name's passes, the loops, or one pass of the networks."""
    if key[1] == -1:
        return "loops"
    if key[0] in ("network", "network_by_unit"):
        return (key[0], key[1])
    return key[0]


def _deal(keys, parts):
    """Split ``keys`` into ``parts`` shares of about equal compile time, a family never split (largest first,
    each to the least loaded); the first share is this process's, the others start later by a helper's
    start-up."""
    families = {}
    for key in keys:
        families.setdefault(_family(key), []).append(key)
    costs = {}
    for name, members in families.items():
        members.sort(key=lambda k: -_FIRST.get(k[1], 1.0))     # the costliest first: it pays for the shared code
        costs[name] = _FIRST.get(members[0][1], 1.0) + sum(_MORE.get(k[1], 1.0) for k in members[1:])
    shares = [[] for _ in range(parts)]
    load = [0.0] + [_STARTUP] * (parts - 1)
    for name in sorted(families, key=lambda f: -costs[f]):
        part = min(range(parts), key=lambda p: load[p])
        shares[part].extend(families[name])
        load[part] += costs[name]
    return shares


def compile_entries(keys, compile_here):
    """Make every key's entry available, compiling a share in helper processes; ``compile_here(key)`` compiles
    (or loads from the disk cache) one key in this process."""
    keys = list(dict.fromkeys(keys))
    _wait_for_background(keys)
    missing = uncompiled(keys)
    families = len({_family(k) for k in missing})
    helpers = max(0, min(workers(), families - 1)) if _manifest_path() is not None else 0
    shares = _deal(missing, helpers + 1)
    processes = [(_start(share), share) for share in shares[1:] if share]
    mine = shares[0]
    for key in mine:
        compile_here(key)
    for process, share in processes:
        _wait(process)
    for key in keys:          # theirs load from the disk cache (or compile here if a helper failed)
        compile_here(key)
    _record(missing)


def uncompiled(keys):
    """The keys that no process recorded as compiled in this cache (all of them where none can be recorded)."""
    known = _compiled_before()
    return [k for k in keys if _encode(k) not in known]


def prefetch(keys):
    """Start a helper compiling ``keys`` now, without waiting, if any of them was never compiled here."""
    if not workers() or _manifest_path() is None:
        return
    missing = uncompiled(keys)
    if missing:
        with _lock:
            _background.append((_start(missing), missing))


def _main(argv):
    from .compiled import compile_key
    keys = [tuple(k) for k in json.loads(argv[1])]
    for key in keys:
        compile_key(key)
    _record(keys)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
