"""Cold start: the first fit, log_prob and sample of a float32 flow in a fresh process, nothing compiled yet.

Each run is a new Python process whose ``NUMBA_CACHE_DIR`` is a new, empty
temporary directory, so every kernel the three calls need is compiled in that
process (Numba's own import included: nflow_np imports it on the first
compiled call). The workloads are ``workloads.py``'s ``COLD_START_*``: a 2-D
RealNVP and a 2-D NSF (4 layers, hidden (32, 32), float32) on 2000 points of
two moons, ``fit(flow, x, epochs=2, batch_size=256, rng=0)``, then
``flow.log_prob(x)``, then ``flow.sample(1000, rng=1)``.

The table gives each phase, their sum ("total", the number the targets are
about: 10 s for RealNVP, 15 s for NSF, on 2 cores) and the child's whole wall
time (interpreter start, imports and building the flow included). With
``--repeat N`` every number is the median of N processes. The script reports;
it exits 0 whatever the times (non-zero only when a child process fails).
The asv benchmark ``startup.ColdStart`` tracks the same total.

    python benchmarks/cold_start.py                 # RealNVP and NSF once each
    python benchmarks/cold_start.py --repeat 3      # medians of 3 processes each
    python benchmarks/cold_start.py --flows NSF --json cold.json

The working tree's nflow_np is timed (it goes first on the child's
``sys.path``), like every other tool in ``benchmarks/``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as wl  # noqa: E402

COLUMNS = ("import", "build", *(name for name, _ in wl.COLD_START_PHASES), "total", "wall")

# The child times its own phases with perf_counter and prints them as one JSON line. The imports of
# the setup are timed apart from building the data and the flow.
_CHILD = """
import time
_t0 = time.perf_counter()
{path}
import json
{imports}
_times = {{"import": time.perf_counter() - _t0}}
_t = time.perf_counter()
{build}
_times["build"] = time.perf_counter() - _t
{phases}
print("COLD_START " + json.dumps(_times))
"""

_PHASE = """
_t = time.perf_counter()
{code}
_times[{name!r}] = time.perf_counter() - _t
"""


def child_source(flow):
    """The Python source one cold-start child runs for ``flow``."""
    lines = wl.cold_start_setup(flow).strip().splitlines()
    imports = "\n".join(line for line in lines if line.startswith(("import ", "from ")))
    build = "\n".join(line for line in lines if not line.startswith(("import ", "from ")))
    phases = "".join(_PHASE.format(code=code, name=name) for name, code in wl.COLD_START_PHASES)
    return _CHILD.format(path=wl.child_path_code(), imports=imports, build=build, phases=phases)


def run_once(flow, python=sys.executable):
    """One fresh process with an empty NUMBA_CACHE_DIR; returns its times in seconds."""
    with tempfile.TemporaryDirectory(prefix="nflow_np_cold_") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        start = time.perf_counter()
        proc = subprocess.run([python, "-c", child_source(flow)], env=env, cwd=cache, capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"the cold-start child for {flow} exited with status {proc.returncode}")
    marked = [line for line in proc.stdout.splitlines() if line.startswith("COLD_START ")]
    if not marked:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"the cold-start child for {flow} printed no times")
    times = json.loads(marked[-1][len("COLD_START "):])
    times["total"] = sum(times[name] for name, _ in wl.COLD_START_PHASES)
    times["wall"] = wall
    return times


def table(rows):
    """Rows of (flow, {column: seconds}, n) as a plain-text table with the targets."""
    head = ["flow", "runs", *COLUMNS, "target", ""]
    body = []
    for flow, times, n in rows:
        target = wl.COLD_START_TARGETS[flow]
        verdict = "within target" if times["total"] <= target else f"{times['total'] / target:.1f}x target"
        body.append([flow, str(n), *(f"{times[c]:.2f}" for c in COLUMNS), f"{target:.0f}", verdict])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(w) if i in (0, len(r) - 1) else v.rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="processes per flow; the table shows medians")
    parser.add_argument("--flows", nargs="+", default=list(wl.COLD_START_TARGETS),
                        choices=list(wl.COLD_START_TARGETS))
    parser.add_argument("--json", help="also write every run's times to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    print(f"cold start, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"nflow_np from {'the working tree ' + wl.ROOT if wl.USE_WORKING_TREE else 'the installed copy'}",
          flush=True)
    rows, runs = [], {}
    for flow in args.flows:
        runs[flow] = []
        for i in range(args.repeat):
            times = run_once(flow)
            runs[flow].append(times)
            print(f"  {flow} run {i + 1}/{args.repeat}: total {times['total']:.2f} s "
                  f"(fit {times['fit']:.2f}, log_prob {times['log_prob']:.2f}, sample {times['sample']:.2f})",
                  flush=True)
        medians = {c: statistics.median(t[c] for t in runs[flow]) for c in COLUMNS}
        rows.append((flow, medians, args.repeat))
    print()
    print("seconds; total = " + " + ".join(name for name, _ in wl.COLD_START_PHASES)
          + " (the targeted number); wall = the whole child process")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"targets": wl.COLD_START_TARGETS, "runs": runs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
