"""nflow_np against PyTorch and zuko on workloads W1-W4, W6 and W7, interleaved, in one table.

    python benchmarks/compare/run.py                  # the full comparison (a quiet machine: ~10 minutes)
    python benchmarks/compare/run.py --quick          # a smoke run: 1 repetition, W1 for 10 epochs
    python benchmarks/compare/run.py --only W2,W3 --impls numba,torch

Each implementation runs in its own worker process (worker.py) with the same
thread count; the driver asks them for one repetition at a time, rotating the
order, so slow drifts of the machine hit every implementation alike. Times
are medians over the repetitions. The float32 matmul rate is measured in the
same run and gives the FLOP floor of the W2/W3 steps. W2's step is timed twice
on nflow_np: through ``fit`` and in a user's own loop (``value_and_grad`` +
``Adam.step``, workloads.own_loop_call), the latter held to PyTorch's W2 step
and to nflow_np's own ``fit`` step.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import workloads as wl  # noqa: E402  (numpy only: the driver never imports torch or numba)

IMPLS = {"numba": "nflow_np:numba", "numpy": "nflow_np:numpy", "torch": "torch", "zuko": "zuko"}
LABELS = {"nflow_np:numba": "nflow_np[numba]", "nflow_np:numpy": "nflow_np[numpy]", "torch": "PyTorch",
          "zuko": "zuko"}
# (workload, metric, what it is, target): the goals of the speed work. A target may hold
#   peer, speedup: the peer's time / nflow_np's at least ``speedup`` (the peer's ``peer_metric``, default the
#                  same metric: the own loop is held to the peer's plain W2 step)
#   floor:         nflow_np's time at most ``floor`` x the FLOP floor of the step (workloads.step_flops)
#   of_fit:        nflow_np's time at most ``of_fit`` x its own fit step on the same workload
ROWS = [
    ("W1", "job", "W1 seed-001 job", dict(peer="torch", speedup=60)),
    ("W2", "step", "W2 RealNVP D=8 step", dict(peer="torch", speedup=10)),
    ("W2", "own_loop", "W2 step, own loop", dict(peer="torch", peer_metric="step", speedup=8, of_fit=1.3)),
    ("W3", "step", "W3 RealNVP D=64 step", dict(floor=1.2)),
    ("W4", "step", "W4 MAF D=8 step", dict(peer="zuko", speedup=6)),
    ("W4", "sample", "W4 MAF sample 10k", dict(peer="zuko", speedup=6)),
    ("W6", "log_prob", "W6 log_prob 1M 2-D", dict(peer="torch", speedup=6)),
    ("W6", "sample", "W6 sample 1M 2-D", dict(peer="torch", speedup=6)),
    ("W7", "step", "W7 NSF coupling D=8 step", dict(peer="zuko", speedup=6)),
]
WORKLOADS = list(wl.WORKLOADS)
# workloads some implementations do not have: the hand-written PyTorch flows have no splines
SKIP = {("torch", "W7")}


class Worker:
    """A worker process and its request/reply pipe. ``call`` returns ``(ok, result or error text)``."""

    def __init__(self, impl, threads):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "NFLOW_COMPARE_THREADS"):
            env[var] = str(threads)
        # no compile helpers: a helper still compiling in the background would share the cores with the timing
        env["NFLOW_NP_COMPILE_WORKERS"] = "0"
        self.impl = impl
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), impl], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.dead = None

    def call(self, op, **args):
        if self.dead:
            return False, self.dead
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            self.dead = f"worker exited (code {self.proc.wait()})"
            return False, self.dead
        reply = json.loads(line)
        if reply["ok"]:
            return True, reply["result"]
        print(f"\n[{LABELS[self.impl]}] {op}({args}) failed:\n{reply['traceback']}", file=sys.stderr)
        return False, reply["error"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def fmt_time(seconds):
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} us"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def run(args):
    impls = [IMPLS[name] for name in args.impls.split(",")]
    only = args.only.split(",") if args.only else WORKLOADS
    repeats = args.repeats or (1 if args.quick else 5)
    print(f"# {len(impls)} implementations, {args.threads} threads each, median of {repeats}"
          f"{' (quick: noisy, W1 10 epochs)' if args.quick else ''}", flush=True)
    workers = {impl: Worker(impl, args.threads) for impl in impls}
    times, nll, rates = {}, {}, {}
    failed = {}   # (implementation, workload) -> error: that cell shows "-", the rest of the run goes on
    try:
        for workload in only:
            for impl, w in workers.items():
                if (impl, workload) in SKIP:
                    continue
                ok, error = w.call("prepare", workload=workload, quick=args.quick)
                if not ok:
                    failed[impl, workload] = error
            reps = repeats if workload != "W1" else min(repeats, 3)
            for rep in range(reps):
                for impl in impls[rep % len(impls):] + impls[:rep % len(impls)]:
                    if (impl, workload) in failed or (impl, workload) in SKIP:
                        continue
                    # let the previous worker's BLAS/OpenMP threads stop spin-waiting before the next one runs
                    time.sleep(args.pause)
                    ok, result = workers[impl].call("measure", workload=workload)
                    if not ok:
                        failed[impl, workload] = result
                        continue
                    for metric, seconds in result.items():
                        times.setdefault((workload, metric, impl), []).append(seconds)
            if workload == "W1":
                for impl, w in workers.items():
                    if (impl, workload) not in failed:
                        ok, value = w.call("held_out_nll")
                        nll[impl] = value if ok else None
            print(f"  {workload} done", file=sys.stderr, flush=True)
        for impl, w in workers.items():
            # one numpy BLAS probe is enough (both nflow_np workers share it), plus torch's
            if impl == "torch" or impl == next((i for i in impls if i.startswith("nflow_np")), None):
                ok, result = w.call("matmul")
                for shape, gflops in (result.items() if ok else ()):
                    rates[f"{'torch' if impl == 'torch' else 'numpy'} {shape}"] = gflops
    finally:
        for w in workers.values():
            w.close()
    report(impls, only, times, nll, rates, failed, args.quick)
    return 1 if failed else 0


def _median(times, key):
    values = times.get(key)
    return statistics.median(values) if values else None


def _met(target, med, ref, peer_time, floor):
    """``(target text, met)``: met is None where a number it needs is missing."""
    texts, verdicts = [], []
    if "speedup" in target:
        texts.append(f">={target['speedup']}x vs {LABELS[target['peer']]}")
        ok = peer_time is not None and med.get(ref) is not None
        verdicts.append(peer_time / med[ref] >= target["speedup"] if ok else None)
    if "floor" in target:
        texts.append(f"<={target['floor']}x floor")
        ok = floor is not None and med.get(ref) is not None
        verdicts.append(med[ref] <= target["floor"] * floor if ok else None)
    if "of_fit" in target:
        texts.append(f"<={target['of_fit']}x fit")
        ok = med.get(ref) is not None and med.get("fit") is not None
        verdicts.append(med[ref] <= target["of_fit"] * med["fit"] if ok else None)
    met = None if None in verdicts else all(verdicts)
    return ", ".join(texts), met


def report(impls, only, times, nll, rates, failed, quick):
    ref = "nflow_np:numba" if "nflow_np:numba" in impls else next((i for i in impls if i.startswith("nflow")), None)
    cols = [LABELS[i] for i in impls]
    header = f"{'workload':26s}" + "".join(f"{c:>17s}" for c in cols)
    peers = [p for p in ("torch", "zuko") if p in impls]
    header += "".join(f"{LABELS[p] + '/nflow':>14s}" for p in peers) + f"  {'target':36s} met"
    print("\n" + header)
    print("-" * len(header))
    floor_rate = max(rates.values()) if rates else None
    for workload, metric, label, target in ROWS:
        if workload not in only:
            continue
        med = {impl: _median(times, (workload, metric, impl)) for impl in impls}
        # the peers' time this row compares with: the own loop is held to the peers' plain step
        peer_metric = target.get("peer_metric", metric)
        peer_med = {p: _median(times, (workload, peer_metric, p)) for p in peers}
        if workload == "W1":
            label += " (10 ep)" if quick else " (100 ep)"
        line = f"{label:26s}" + "".join(f"{fmt_time(med[i]):>17s}" for i in impls)
        ratios = {p: (peer_med[p] / med[ref] if peer_med[p] and ref and med.get(ref) else None) for p in peers}
        line += "".join(f"{fmt_ratio(ratios[p]):>14s}" for p in peers)
        floor = None
        if "floor" in target and floor_rate:
            floor = wl.step_flops(workload) / (floor_rate * 1e9)
        if "of_fit" in target:
            med["fit"] = _median(times, (workload, "step", ref))
        text, met = _met(target, med, ref, peer_med.get(target.get("peer")), floor)
        print(line + f"  {text:36s} {'?' if met is None else ('yes' if met else 'NO')}")

    own = [(w, i) for w in only if w in wl.OWN_LOOP for i in impls if i.startswith("nflow_np")]
    own_parts = {}
    for workload, impl in own:
        loop, fit = _median(times, (workload, "own_loop", impl)), _median(times, (workload, "step", impl))
        if loop and fit:
            own_parts.setdefault(workload, []).append(f"{LABELS[impl]} {loop / fit:.2f}x ({fmt_time(loop)} / "
                                                  f"{fmt_time(fit)})")
    for workload, texts in own_parts.items():
        print(f"\n{workload} own loop / fit, per step (value_and_grad + Adam.step against fit): " + ", ".join(texts))

    if rates:
        print("\nfloat32 matmul rate (best of 5): "
              + ", ".join(f"{name} {gflops:.1f} GFLOP/s" for name, gflops in rates.items()))
        for workload in ("W2", "W3"):
            if workload not in only:
                continue
            flops = wl.step_flops(workload)
            floor = flops / (floor_rate * 1e9)
            parts = [f"{LABELS[i]} {med / floor:.2f}x floor" for i in impls
                     if (med := _median(times, (workload, "step", i))) is not None]
            print(f"{workload} step: {flops / 1e9:.3f} GFLOP (3 x forward matmuls, workloads.realnvp_step_flops)"
                  f" -> floor {fmt_time(floor)} at {floor_rate:.1f} GFLOP/s; " + ", ".join(parts))
    if nll:
        print(f"\nW1 held-out NLL (20,000 points; the mixture's entropy, the best possible, is "
              f"{wl.w1_entropy():.3f}): "
              + ", ".join(f"{LABELS[i]} {v:.3f}" for i, v in nll.items() if v is not None))
    for (impl, workload), error in failed.items():
        print(f"ERROR {LABELS[impl]} {workload}: {error}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition and W1 for 10 epochs: a smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated workloads out of {','.join(WORKLOADS)}")
    parser.add_argument("--impls", default="numba,numpy,torch,zuko",
                        help="comma-separated implementations out of numba,numpy (nflow_np backends),torch,zuko")
    parser.add_argument("--repeats", type=int, default=0, help="repetitions per workload (default 5; W1 at most 3)")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds of idle time before each timed repetition (default 0.3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every implementation (default 2)")
    args = parser.parse_args()
    bad = [w for w in (args.only.split(",") if args.only else []) if w not in WORKLOADS]
    bad += [i for i in args.impls.split(",") if i not in IMPLS]
    if bad:
        parser.error(f"unknown workload or implementation: {', '.join(bad)}")
    start = time.perf_counter()
    code = run(args)
    print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
