"""nflow_np against itself: the same workloads from two checkouts, interleaved, medians and ratios.

    python benchmarks/compare/ab.py OLD_TREE NEW_TREE [--repeats 9] [--only W2,W6]

``OLD_TREE`` and ``NEW_TREE`` are two working trees of the repository (``git
worktree add /tmp/old <commit>`` makes one). Each runs its own
``benchmarks/compare/worker.py`` (so each times its own ``nflow_np``) on the
numba backend with 2 threads and no compile helpers; repetitions alternate
which tree goes first, so drifts of the machine hit both alike.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from workloads import WORKLOADS  # noqa: E402  (numpy only)


def start(tree, threads):
    env = dict(os.environ, NFLOW_NP_COMPILE_WORKERS="0")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                "NFLOW_COMPARE_THREADS"):
        env[var] = str(threads)
    return subprocess.Popen([sys.executable, os.path.join(tree, "benchmarks", "compare", "worker.py"), "nflow_np:numba"],
                            env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def call(worker, op, **args):
    worker.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
    reply = json.loads(worker.stdout.readline())
    if not reply["ok"]:
        raise RuntimeError(reply.get("traceback", reply.get("error")))
    return reply["result"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    workers = {"before": start(os.path.abspath(args.old), args.threads),
               "after": start(os.path.abspath(args.new), args.threads)}
    times = {}
    try:
        for workload in args.only.split(","):
            for worker in workers.values():
                call(worker, "prepare", workload=workload, quick=False)
            for rep in range(args.repeats if workload != "W1" else min(args.repeats, 3)):
                for name in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                    time.sleep(0.3)
                    for metric, seconds in call(workers[name], "measure", workload=workload).items():
                        times.setdefault((workload, metric), {}).setdefault(name, []).append(seconds)
            print(f"  {workload} done", file=sys.stderr, flush=True)
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait(timeout=60)
    print("| workload | before | after | after/before |\n|---|---|---|---|")
    for (workload, metric), runs in times.items():
        if set(runs) != {"before", "after"}:    # a metric one tree does not measure (a row added since)
            cells = [f"{statistics.median(runs[k]) * 1e3:.3g} ms" if k in runs else "-" for k in ("before", "after")]
            print(f"| {workload} {metric} | {cells[0]} | {cells[1]} | - |")
            continue
        before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
        print(f"| {workload} {metric} | {before * 1e3:.3g} ms | {after * 1e3:.3g} ms | {after / before:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
