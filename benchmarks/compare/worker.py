"""One implementation (nflow_np on a backend, PyTorch or zuko) serving timing requests from ``run.py``.

    python worker.py nflow_np:numba | nflow_np:numpy | torch | zuko

Each implementation lives in its own long-lived process so that its thread
settings, imports (Numba's and PyTorch's thread pools) and compiled code never
touch another's, while the driver still interleaves their repetitions. The
protocol is one JSON object per line: requests on stdin
(``{"op": ..., "args": {...}}``), replies on the original stdout
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``); anything
the libraries print goes to stderr.
"""

import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))   # benchmarks/: workloads.py


def _runner(impl):
    if impl.startswith("nflow_np:"):
        from impl_nflow import NflowRunner
        return NflowRunner(impl.split(":", 1)[1])
    if impl == "torch":
        from impl_torch import TorchRunner
        return TorchRunner()
    if impl == "zuko":
        from impl_zuko import ZukoRunner
        return ZukoRunner()
    raise SystemExit(f"worker: unknown implementation {impl!r}")


def main(impl):
    # Keep the protocol channel private: fd 1 becomes stderr for everyone else.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    runner = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if runner is None:
                runner = _runner(impl)
            result = getattr(runner, request["op"])(**request.get("args", {}))
            reply = {"ok": True, "result": result}
        except Exception as exc:  # the driver reports it and carries on with the other implementations
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        channel.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
