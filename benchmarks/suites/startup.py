"""Start-up costs, each in a fresh Python process (asv ``timeraw_``): import time and the first compiled call.

``import nflow_np`` promises to load NumPy only, so its import time is
compared with ``import numpy`` itself. The first ``log_prob`` on the numba
backend pays for importing Numba and compiling (cold: an empty
``NUMBA_CACHE_DIR``) or for loading the compiled kernels from disk (warm: a
cache directory primed once in ``setup``); the numpy backend's first call is
the baseline with no compilation at all.

``ColdStart`` is the cold start a user sees: the first ``fit``, ``log_prob``
and ``sample`` of a float32 RealNVP or NSF with an empty ``NUMBA_CACHE_DIR``
(targets 10 s and 15 s on 2 cores). ``benchmarks/cold_start.py`` times the
same code phase by phase.
"""

import os
import subprocess
import sys
import tempfile

from ._common import workloads as wl

# The child process imports the same nflow_np as the rest of the suite: the working tree under
# --python=same, the commit asv installed in an environment it built.
_PATH = wl.child_path_code()

_FIRST_CALL = """
flow = flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0, dtype=np.float32)
flow.log_prob(x, backend={backend!r})
"""

_FIRST_CALL_SETUP = """
import os
{path}
{cache_line}
import numpy as np
import nflow_np
from nflow_np import flows
x = np.random.default_rng(0).standard_normal((1000, 2)).astype(np.float32)
"""

_WARM_CACHE = os.path.join(tempfile.gettempdir(), "nflow_np_asv_numba_cache")


# cold: a fresh empty cache per timed process (removed when it exits), so nothing is loaded from disk
# a first call as a user meets it: the compile helpers on (the suite turns them off for its timings)
_COLD = ("import tempfile; _cache = tempfile.TemporaryDirectory(); os.environ['NUMBA_CACHE_DIR'] = _cache.name; "
         "os.environ.pop('NFLOW_NP_COMPILE_WORKERS', None)")


def _first_call(backend, cache_dir=None):
    cache_line = _COLD if cache_dir is None else f"os.environ['NUMBA_CACHE_DIR'] = {cache_dir!r}"
    setup = _FIRST_CALL_SETUP.format(path=_PATH, cache_line=cache_line)
    return _FIRST_CALL.format(backend=backend), setup


def timeraw_import_numpy():
    return "import numpy"


def timeraw_import_nflow_np():
    """Everything ``import nflow_np`` costs, NumPy included."""
    return "import nflow_np", _PATH


def timeraw_import_nflow_np_after_numpy():
    """What nflow_np adds on top of an already imported NumPy."""
    return "import nflow_np", _PATH + "\nimport numpy"


class FirstLogProb:
    """Build seed 001's flow and evaluate 1000 points once, in a fresh process."""

    params = (["numba-cold", "numba-warm", "numpy"],)
    param_names = ["case"]
    repeat = (1, 5, 120.0)
    # no warm-up process: for the cold case it would be one more full compilation, thrown away
    warmup_time = 0.0
    timeout = 600

    def setup(self, case):
        backend = case.split("-")[0]
        # asv runs setup in its own process; the timed child is a fresh one, so this only checks early
        wl.require_backend(backend)
        if case == "numba-warm":
            os.makedirs(_WARM_CACHE, exist_ok=True)
            stmt, setup = _first_call("numba", _WARM_CACHE)
            # prime (or re-validate, when the sources changed) the on-disk cache
            subprocess.run([sys.executable, "-c", setup + stmt], check=True)

    def timeraw_first_log_prob(self, case):
        return _first_call(case.split("-")[0], _WARM_CACHE if case == "numba-warm" else None)


class ColdStart:
    """First fit (2 epochs), log_prob and sample of a float32 2-D RealNVP or NSF (4 layers, hidden (32, 32),
    2000 points of two moons) in a fresh process with an empty ``NUMBA_CACHE_DIR``; the time is their sum.
    Imports, data and building the flow are setup, outside the timing (the workloads are ``workloads.py``'s
    ``COLD_START_*``)."""

    params = (list(wl.COLD_START_TARGETS),)
    param_names = ["flow"]
    # every sample is a full compilation (over a minute before the compiled engine is reworked)
    number = 1
    repeat = (1, 3, 180.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def timeraw_first_fit_log_prob_sample(self, flow):
        setup = "\n".join([_PATH, "import os", _COLD, wl.cold_start_setup(flow)])
        stmt = "\n".join(code for _, code in wl.COLD_START_PHASES)
        return stmt, setup
