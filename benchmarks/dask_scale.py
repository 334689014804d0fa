"""nflow_np at scale on Dask: scoring a memory-mapped file, out-of-core fit, data-parallel step overhead.

Three measurements, printed as one table (and written as JSON with ``--json``):

1. **Scoring** ``--rows`` 2-D rows of a memory-mapped ``.npy`` with a RealNVP (W1's: 4 couplings, hidden (8, 8),
   float64), the log-densities written to another ``.npy``: in-process (blocks of ``--block`` rows through
   ``flow.log_prob``), and on a ``LocalCluster`` with 1 and with 2 worker processes (one thread each) through
   ``nflow_np.dask.from_npy`` → ``flow.log_prob`` → ``nflow_np.dask.store_npy``. Rows per second, and the peak
   resident memory of the scoring process (the largest worker's), sampled every 20 ms while it scores: all of it
   (``VmRSS``, the pages of the memory-mapped files it has mapped at the time included) and its private part
   (``RssAnon``: interpreter, Numba and the blocks it holds).
2. **Out-of-core fit**: one epoch of ``fit`` over a ``--fit-rows`` 2-D memmap (same flow, batch ``--fit-batch``)
   streamed through the shuffle buffer, against ``fit`` on the same rows in memory. Seconds per epoch.
3. **Data-parallel step** for W3 (RealNVP, D=64, 5 layers, hidden (256, 256), float32, batch 8192):
   ``nflow_np.dask.fit_distributed`` on 1 and 2 workers against the in-process step (``nll_and_grad`` + Adam).
   Per step: wall time, the slowest shard's compute, the driver's update, and what is left (scheduling and
   moving the parameters and gradients): the overhead.

The issue's full sizes are ``--rows 100000000 --fit-rows 10000000``; the defaults are smaller so that a shared
2-core machine finishes in minutes:

    python benchmarks/dask_scale.py                               # 10^7 rows scored, 10^6-row fit
    python benchmarks/dask_scale.py --rows 100000000 --fit-rows 10000000 --json scale.json

The working tree's nflow_np is measured (it goes first on ``sys.path``, the workers' too).
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")


def _status_mb(*fields):
    """``/proc/self/status`` fields in MB (0 where the platform has no /proc)."""
    values = dict.fromkeys(fields, 0.0)
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in values:
                    values[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return [values[f] for f in fields]


class _Peak:
    """Samples this process's resident memory every 20 ms: the peak of all of it (``VmRSS``: the file pages it
    has mapped included) and of its private memory (``RssAnon``: what it allocated itself). ``ru_maxrss`` cannot
    serve: a worker spawned by a big driver inherits the driver's high-water mark across ``exec``."""

    def __init__(self):
        self.rss = self.anon = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            rss, anon = _status_mb("VmRSS", "RssAnon")
            self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)
            self.done.wait(0.02)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.rss, self.anon


def _start_peak():
    sys._nflow_np_peak = _Peak()      # on a worker: kept where the next call finds it


def _stop_peak():
    return sys._nflow_np_peak.stop()


def _write_points(path, rows, block=1 << 22, seed=0):
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, 2))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        out[start:stop] = rng.normal(size=(stop - start, 2))
    out.flush()
    del out


def score_in_process(flow, path, out_path, block):
    x = np.load(path, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float64, shape=(len(x),))
    start = time.perf_counter()
    for s in range(0, len(x), block):
        out[s:s + block] = flow.log_prob(np.asarray(x[s:s + block]))
    out.flush()
    return time.perf_counter() - start


def score_on_cluster(flow, path, out_path, block, workers):
    from distributed import Client, LocalCluster

    import nflow_np.dask as nd
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        warm = nd.from_npy(path, chunks=block)[:block]
        flow.log_prob(warm).compute()              # each worker compiles (from the disk cache) and loads the model
        client.run(_start_peak)
        x = nd.from_npy(path, chunks=block)
        lp = flow.log_prob(x)
        start = time.perf_counter()
        nd.store_npy(lp, out_path)
        seconds = time.perf_counter() - start
        peaks = client.run(_stop_peak)
    return seconds, max(p[0] for p in peaks.values()), max(p[1] for p in peaks.values())


def bench_scoring(args, tmp, results):
    from nflow_np import flows
    path = os.path.join(tmp, "points.npy")
    t = time.perf_counter()
    _write_points(path, args.rows)
    print(f"wrote {args.rows:,} rows ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    flow = flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0)
    flow.log_prob(np.zeros((8, 2)))                # compile first
    out = os.path.join(tmp, "lp_local.npy")
    peak = _Peak()
    seconds = score_in_process(flow, path, out, args.block)
    rss, anon = peak.stop()
    results.append(dict(what="score, in-process", rows=args.rows, seconds=seconds, rows_per_s=args.rows / seconds,
                        peak_mb=rss, private_mb=anon))
    reference = np.load(out, mmap_mode="r")
    for workers in (1, 2):
        out_w = os.path.join(tmp, f"lp_{workers}.npy")
        seconds, peak, private = score_on_cluster(flow, path, out_w, args.block, workers)
        same = bool(np.array_equal(np.load(out_w, mmap_mode="r")[:1_000_000], reference[:1_000_000]))
        results.append(dict(what=f"score, LocalCluster {workers} worker{'s' * (workers > 1)}", rows=args.rows,
                            seconds=seconds, rows_per_s=args.rows / seconds, peak_mb=peak, private_mb=private,
                            equal_first_million=same))
        os.remove(out_w)
    os.remove(out)
    os.remove(path)


def bench_fit(args, tmp, results):
    from nflow_np import flows
    from nflow_np.train import Stream, fit
    path = os.path.join(tmp, "fit.npy")
    _write_points(path, args.fit_rows, seed=1)
    small = np.load(path, mmap_mode="r")[:4096]
    fit(flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0), np.array(small), epochs=1, batch_size=args.fit_batch)
    mm = np.load(path, mmap_mode="r")
    flow = flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0)
    start = time.perf_counter()
    fit(flow, Stream(mm), epochs=1, batch_size=args.fit_batch, rng=0)
    streamed = time.perf_counter() - start
    results.append(dict(what="fit epoch, streamed memmap", rows=args.fit_rows, seconds=streamed,
                        rows_per_s=args.fit_rows / streamed))
    data = np.array(mm)
    flow = flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0)
    start = time.perf_counter()
    fit(flow, data, epochs=1, batch_size=args.fit_batch, rng=0)
    in_memory = time.perf_counter() - start
    results.append(dict(what="fit epoch, in memory", rows=args.fit_rows, seconds=in_memory,
                        rows_per_s=args.fit_rows / in_memory, ratio=streamed / in_memory))
    del data, mm
    os.remove(path)


def bench_parallel(args, results):
    from distributed import Client, LocalCluster

    import nflow_np.dask as nd
    from nflow_np import flows
    from nflow_np.train import Adam, nll_and_grad
    dim, batch = 64, args.w3_batch
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4 * batch, dim)).astype(np.float32)
    flow = flows.RealNVP(dim, n_layers=5, hidden=(256, 256), rng=0, dtype=np.float32)
    params = dict(flow.parameters())
    n_params = sum(p.size for p in params.values())
    opt = Adam(params.items(), lr=1e-4)
    times = []
    for step in range(args.w3_steps + 2):
        t = time.perf_counter()
        _, grads = nll_and_grad(flow, data[rng.choice(len(data), batch, replace=False)])
        opt.step(grads)
        times.append(time.perf_counter() - t)
    local = float(np.median(times[2:]))
    results.append(dict(what="W3 step, in-process", batch=batch, seconds=local, params=n_params,
                        param_mb=n_params * 4 / 2**20))
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            f = flows.RealNVP(dim, n_layers=5, hidden=(256, 256), rng=0, dtype=np.float32)
            nd.fit_distributed(f, data, client=client, steps=2, batch_size=batch, lr=1e-4, rng=0)   # warm-up
            timings = {}
            nd.fit_distributed(f, data, client=client, steps=args.w3_steps, batch_size=batch, lr=1e-4, rng=1,
                               timings=timings)
        step = float(np.median(timings["step"]))
        compute = float(np.median(timings["compute"]))
        update = float(np.median(timings["update"]))
        results.append(dict(what=f"W3 step, LocalCluster {workers} worker{'s' * (workers > 1)}", batch=batch,
                            seconds=step, compute=compute, update=update, overhead=step - compute - update,
                            params=n_params))


def _table(results):
    lines = [f"{'measurement':34} {'rows/batch':>12} {'seconds':>9} {'rows/s':>12} {'RSS MB':>8}  notes",
             "-" * 100]
    for r in results:
        size = r.get("rows", r.get("batch"))
        rate = f"{r['rows_per_s']:,.0f}" if "rows_per_s" in r else ""
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else ""
        notes = []
        if "private_mb" in r:
            notes.append(f"private (RssAnon) peak {r['private_mb']:.0f} MB")
        if "equal_first_million" in r:
            notes.append("== in-process" if r["equal_first_million"] else "DIFFERS from in-process")
        if "ratio" in r:
            notes.append(f"streamed/in-memory {r['ratio']:.2f}x")
        if "compute" in r:
            notes.append(f"compute {r['compute'] * 1e3:.1f} ms, update {r['update'] * 1e3:.1f} ms, "
                         f"overhead {r['overhead'] * 1e3:.1f} ms")
        if "param_mb" in r:
            notes.append(f"{r['params']:,} parameters ({r['param_mb']:.1f} MB)")
        lines.append(f"{r['what']:34} {size:>12,} {r['seconds']:>9.3f} {rate:>12} {peak:>8}  {'; '.join(notes)}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows scored (the issue's: 100000000)")
    parser.add_argument("--block", type=int, default=1 << 20, help="rows per block when scoring")
    parser.add_argument("--fit-rows", type=int, default=1_000_000, help="rows of the out-of-core fit (issue: 10^7)")
    parser.add_argument("--fit-batch", type=int, default=1024, help="batch size of the fit")
    parser.add_argument("--w3-batch", type=int, default=8192, help="W3's batch")
    parser.add_argument("--w3-steps", type=int, default=10, help="timed W3 steps")
    parser.add_argument("--only", choices=("score", "fit", "parallel"), action="append", help="run only these")
    parser.add_argument("--dir", default=None, help="where the temporary files go (default: the system's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    only = set(args.only or ("score", "fit", "parallel"))
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if "score" in only:
            bench_scoring(args, tmp, results)
        if "fit" in only:
            bench_fit(args, tmp, results)
    if "parallel" in only:
        bench_parallel(args, results)
    print(_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
