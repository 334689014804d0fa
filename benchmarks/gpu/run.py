"""nflow_np's CUDA backend against PyTorch on the same card, this project's CPU path, and the card's floor.

One command on a GPU machine (from the repository root)::

    python benchmarks/gpu/run.py            # the full table (a few minutes, most of it compiling once)
    python benchmarks/gpu/run.py --quick    # smaller sizes, fewer repeats: a smoke test
    python benchmarks/gpu/run.py --sim      # tiny sizes under NUMBA_ENABLE_CUDASIM=1: checks it runs, no GPU

Workloads (float32): ``log_prob`` and ``sample`` of 10 million 2-D points (seed 001's RealNVP: 4 couplings,
hidden (8, 8)) and of 1 million 64-D points (W3's RealNVP: 5 couplings, hidden (256, 256)); one Adam step of
that 64-D RealNVP on a batch of 65,536, timed through ``fit`` (20 steps per timed call). Each is timed:

- nflow_np ``backend="cuda"``, inputs and outputs on the device (``log_prob`` of a device array, ``sample``
  through the runner's device draws), and through the public NumPy-in, NumPy-out calls;
- PyTorch on the same card (TF32 off), the same RealNVP written out below, results left on the device;
- nflow_np on the CPU (``backend="numba"``) on fewer points, reported per point;
- the card's floor: the workload's compulsory bytes over the measured device bandwidth (a large
  device-to-device copy), and its multiply-add FLOPs over the measured float32 matrix rate (PyTorch's
  ``matmul`` with TF32 off; this project's tiled kernel's rate is printed beside it).

A last table times neural spline flows (``flows.NSF``, 8-D, 4 layers of 8 bins, hidden (64, 64); coupling and
autoregressive): ``log_prob`` of 1 million device-resident points and one Adam step on a batch of 8,192, against
the CPU path per point (PyTorch has no spline flow to compare with).

Medians of ``--repeats`` timed calls after a warm-up call (which compiles). Prints markdown tables.
"""

import argparse
import math
import os
import statistics
import sys
import time

if "--sim" in sys.argv:     # must precede the first import of numba
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    sys.setswitchinterval(1e-4)     # simulated threads pass the interpreter lock around: often, then

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)     # the working tree's nflow_np, not an installed copy

import nflow_np  # noqa: E402
from nflow_np import flows  # noqa: E402
from nflow_np.train import fit  # noqa: E402

SIZES = {
    # name: (2-D points, 64-D points, dim of the wide flow, its hidden width, training batch, steps per fit)
    "full": dict(n2=10_000_000, n64=1_000_000, dim=64, hidden=256, batch=65_536, steps=20,
                 cpu_n2=1_000_000, cpu_n64=20_000, cpu_batch=4096, copy_bytes=1 << 30, square=4096,
                 nsf_n=1_000_000, nsf_layers=4, nsf_hidden=64, nsf_batch=8192, nsf_steps=10, cpu_nsf_n=20_000),
    "quick": dict(n2=1_000_000, n64=100_000, dim=64, hidden=256, batch=16_384, steps=4,
                  cpu_n2=100_000, cpu_n64=2_000, cpu_batch=1024, copy_bytes=1 << 28, square=2048,
                  nsf_n=100_000, nsf_layers=4, nsf_hidden=64, nsf_batch=4096, nsf_steps=4, cpu_nsf_n=2_000),
    "sim": dict(n2=64, n64=16, dim=4, hidden=8, batch=16, steps=2, cpu_n2=64, cpu_n64=16, cpu_batch=16,
                copy_bytes=1 << 16, square=16, nsf_n=16, nsf_layers=2, nsf_hidden=8, nsf_batch=8, nsf_steps=1,
                cpu_nsf_n=16),
}
NSF_DIM, NSF_BINS = 8, 8
FLOAT = 4       # bytes per float32


# ---------------------------------------------------------------- timing

def median_seconds(fn, sync, repeats):
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call; ``sync`` waits for the device."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- PyTorch's RealNVP, on the card

def torch_realnvp(dim, n_layers, hidden, device):
    """The same RealNVP as ``flows.RealNVP``: alternating halves, ReLU MLPs, log-scale ``3 tanh(raw / 3)``."""
    import torch
    from torch import nn

    class Coupling(nn.Module):
        def __init__(self, parity):
            super().__init__()
            keep = torch.arange(dim) % 2 == parity
            self.register_buffer("a", torch.nonzero(keep).flatten())
            self.register_buffer("b", torch.nonzero(~keep).flatten())
            self.register_buffer("unsort", torch.argsort(torch.cat([self.a, self.b])))
            widths = (len(self.a),) + tuple(hidden) + (2 * len(self.b),)
            layers = []
            for i, (fi, fo) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(fi, fo))
                if i < len(widths) - 2:
                    layers.append(nn.ReLU())
            self.net = nn.Sequential(*layers)
            self.nb = len(self.b)

        def shift_log_scale(self, cond):
            out = self.net(cond)
            return out[:, :self.nb], 3.0 * torch.tanh(out[:, self.nb:] / 3.0)

        def inverse(self, y):
            ya = y.index_select(1, self.a)
            shift, s = self.shift_log_scale(ya)
            xb = (y.index_select(1, self.b) - shift) * torch.exp(-s)
            return torch.cat([ya, xb], 1).index_select(1, self.unsort), -s.sum(-1)

        def forward(self, x):
            xa = x.index_select(1, self.a)
            shift, s = self.shift_log_scale(xa)
            yb = x.index_select(1, self.b) * torch.exp(s) + shift
            return torch.cat([xa, yb], 1).index_select(1, self.unsort), s.sum(-1)

    class RealNVP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Coupling(i % 2) for i in range(n_layers))

        def log_prob(self, x):
            total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for layer in reversed(self.layers):
                x, ld = layer.inverse(x)
                total = total + ld
            return -0.5 * (x * x).sum(-1) - 0.5 * dim * math.log(2 * math.pi) + total

        def sample_and_log_prob(self, n):
            z = torch.randn(n, dim, device=self.layers[0].a.device)
            x, total = z, 0.0
            for layer in self.layers:
                x, ld = layer(x)
                total = total + ld
            return x, -0.5 * (z * z).sum(-1) - 0.5 * dim * math.log(2 * math.pi) - total

    return RealNVP().to(device)


def torch_side(spec, repeats, wide, narrow):
    """PyTorch timings (seconds) on the card, and its float32 matmul rate (FLOP/s), TF32 off."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    out = {}
    with torch.no_grad():
        for name, (dim, layers, hidden, n) in (("2-D", narrow), ("64-D", wide)):
            model = torch_realnvp(dim, layers, hidden, dev)
            x = torch.randn(n, dim, device=dev)
            out[f"log_prob {name}"] = median_seconds(lambda: model.log_prob(x), sync, repeats)
            out[f"sample {name}"] = median_seconds(lambda: model.sample_and_log_prob(n), sync, repeats)
        s = spec["square"]
        a, b = torch.randn(s, s, device=dev), torch.randn(s, s, device=dev)
        out["matmul square"] = 2 * s ** 3 / median_seconds(lambda: a @ b, sync, repeats)
        a, b = torch.randn(spec["batch"], spec["hidden"], device=dev), torch.randn(spec["hidden"], spec["hidden"],
                                                                                   device=dev)
        out["matmul flow"] = 2 * spec["batch"] * spec["hidden"] ** 2 / median_seconds(lambda: a @ b, sync, repeats)
    dim, layers, hidden, _ = wide
    model = torch_realnvp(dim, layers, hidden, dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = torch.randn(spec["batch"], dim, device=dev) * 0.5

    def step():
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(batch).mean()
        loss.backward()
        opt.step()
    out["train step"] = median_seconds(step, sync, repeats)
    return out


# ---------------------------------------------------------------- nflow_np on the device and on the CPU

def perturb(flow, seed=7, scale=0.1):
    rng = np.random.default_rng(seed)
    for _, value in flow.parameters():
        value += (scale * rng.standard_normal(value.shape)).astype(value.dtype)
    return flow


def step_data(n, dim):
    rng = np.random.default_rng(10)
    mix = np.eye(dim) + 0.5 * rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return (rng.standard_normal((n, dim)) @ mix + 0.1 * np.arange(dim)).astype(np.float32)


def nflow_side(spec, repeats, wide, narrow):
    """nflow_np's CUDA timings (seconds): device-resident and public-API, plus the tiled kernel's rates."""
    from numba import cuda

    from nflow_np.kernels.cuda.mlp import matmul_bias_act_cuda
    from nflow_np.kernels.cuda.runner import runner_for
    from nflow_np.kernels.plan import program_for
    sync = cuda.synchronize
    out = {}
    rng = np.random.default_rng(0)
    for name, (dim, layers, hidden, n) in (("2-D", narrow), ("64-D", wide)):
        flow = perturb(flows.RealNVP(dim, n_layers=layers, hidden=hidden, rng=0, dtype=np.float32))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        x_dev = cuda.to_device(x)
        out[f"log_prob {name}"] = median_seconds(lambda: flow.log_prob(x_dev, backend="cuda"), sync, repeats)
        runner = runner_for(program_for(flow))
        out[f"sample {name}"] = median_seconds(lambda: runner.draw(n, rng, on_device=True), sync, repeats)
        out[f"log_prob {name} (NumPy in/out)"] = median_seconds(lambda: flow.log_prob(x, backend="cuda"), sync,
                                                                repeats)
        out[f"sample {name} (NumPy out)"] = median_seconds(lambda: flow.sample(n, rng=0, backend="cuda"), sync,
                                                           repeats)
    dim, layers, hidden, _ = wide
    data = step_data(spec["steps"] * spec["batch"], dim)
    flow = flows.RealNVP(dim, n_layers=layers, hidden=hidden, rng=0, dtype=np.float32)
    out["train step"] = median_seconds(lambda: fit(flow, data, epochs=1, batch_size=spec["batch"], rng=0,
                                                   backend="cuda"), sync, repeats) / spec["steps"]
    for label, (m, k, n) in (("matmul square", (spec["square"],) * 3),
                             ("matmul flow", (spec["batch"], spec["hidden"], spec["hidden"]))):
        a = cuda.to_device(rng.standard_normal((m, k)).astype(np.float32))
        w = cuda.to_device(rng.standard_normal((k, n)).astype(np.float32))
        bias, c = cuda.to_device(np.zeros(n, np.float32)), cuda.device_array((m, n), np.float32)
        out[label] = 2 * m * k * n / median_seconds(lambda: matmul_bias_act_cuda(a, w, bias, c), sync, repeats)
    src = cuda.device_array(spec["copy_bytes"] // FLOAT, np.float32)
    dst = cuda.device_array_like(src)
    out["bandwidth"] = 2 * spec["copy_bytes"] / median_seconds(lambda: dst.copy_to_device(src), sync, repeats)
    return out


def cpu_side(spec, repeats, wide, narrow):
    """nflow_np on the CPU (``backend="numba"``), seconds per point (per sample for the training step)."""
    out = {}
    rng = np.random.default_rng(0)
    nothing = lambda: None  # noqa: E731
    for name, (dim, layers, hidden, _), n in (("2-D", narrow, spec["cpu_n2"]), ("64-D", wide, spec["cpu_n64"])):
        flow = perturb(flows.RealNVP(dim, n_layers=layers, hidden=hidden, rng=0, dtype=np.float32))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        out[f"log_prob {name}"] = median_seconds(lambda: flow.log_prob(x, backend="numba"), nothing, repeats) / n
        out[f"sample {name}"] = median_seconds(lambda: flow.sample_and_log_prob(n, rng=0, backend="numba"), nothing,
                                               repeats) / n
    dim, layers, hidden, _ = wide
    batch = spec["cpu_batch"]
    data = step_data(2 * batch, dim)
    flow = flows.RealNVP(dim, n_layers=layers, hidden=hidden, rng=0, dtype=np.float32)
    out["train step"] = median_seconds(lambda: fit(flow, data, epochs=1, batch_size=batch, rng=0, backend="numba"),
                                       nothing, repeats) / (2 * batch)
    return out


def nsf_side(spec, repeats, cpu):
    """Spline flows: ``{(kind, call): (cuda seconds, CPU seconds per point or None)}``."""
    from numba import cuda
    sync = cuda.synchronize
    nothing = lambda: None  # noqa: E731
    rng = np.random.default_rng(0)
    out = {}
    for kind, autoregressive in (("coupling", False), ("autoregressive", True)):
        def make():
            return flows.NSF(NSF_DIM, n_layers=spec["nsf_layers"], bins=NSF_BINS, hidden=(spec["nsf_hidden"],) * 2,
                             autoregressive=autoregressive, rng=0, dtype=np.float32)
        flow = perturb(make())
        x = rng.standard_normal((spec["nsf_n"], NSF_DIM)).astype(np.float32)
        x_dev = cuda.to_device(x)
        gpu = median_seconds(lambda: flow.log_prob(x_dev, backend="cuda"), sync, repeats)
        per_point = None
        if cpu:
            xc = x[:spec["cpu_nsf_n"]]
            per_point = median_seconds(lambda: flow.log_prob(xc, backend="numba"), nothing, repeats) / len(xc)
        out[kind, f"log_prob, {spec['nsf_n']:,} points"] = (gpu, per_point, spec["nsf_n"])
        batch = spec["nsf_batch"]
        data = step_data(spec["nsf_steps"] * batch, NSF_DIM)
        flow = make()
        gpu = median_seconds(lambda: fit(flow, data, epochs=1, batch_size=batch, rng=0, backend="cuda"), sync,
                             repeats) / spec["nsf_steps"]
        per_point = None
        if cpu:
            cpu_data = data[:2 * min(batch, spec["cpu_batch"])]
            per_point = median_seconds(lambda: fit(flow, cpu_data, epochs=1, batch_size=len(cpu_data) // 2, rng=0,
                                                   backend="numba"), nothing, repeats) / len(cpu_data)
        out[kind, f"train step, batch {batch:,}"] = (gpu, per_point, batch)
    return out


def nsf_report(nsf, spec):
    lines = ["", f"Neural spline flows (float32, {NSF_DIM}-D, {spec['nsf_layers']} layers of {NSF_BINS} bins, hidden "
             f"({spec['nsf_hidden']}, {spec['nsf_hidden']})); inputs on the device:", "",
             "| flow | call | nflow_np cuda | points / s | CPU (numba) per point | CPU / cuda per point |",
             "|---|---|---|---|---|---|"]
    for (kind, call), (gpu, per_point, n) in nsf.items():
        lines.append(f"| NSF {kind} | {call} | {fmt_time(gpu)} | {n / gpu:.3g} | {fmt_time(per_point)} | "
                     f"{ratio(per_point, gpu / n)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the floor and the tables

def coupling_flops(dim, layers, hidden):
    """Multiply-add FLOPs per point of one pass through a RealNVP's networks."""
    total = 0
    for i in range(layers):
        na = (dim + 1 - i % 2) // 2     # alternating halves (equal for the even dims timed here)
        widths = (na,) + tuple(hidden) + (2 * (dim - na),)
        total += 2 * sum(fi * fo for fi, fo in zip(widths[:-1], widths[1:]))
    return total


def parameter_count(dim, layers, hidden):
    flow = flows.RealNVP(dim, n_layers=layers, hidden=hidden, rng=0, dtype=np.float32)
    return sum(p.size for _, p in flow.parameters())


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-12:.3g} ps"


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def report(spec, gpu, torch_t, cpu, wide, narrow, device_name, repeats):
    bandwidth = gpu["bandwidth"]
    peak = torch_t.get("matmul square") if torch_t else None
    peak = peak or gpu["matmul square"]
    lines = [f"## nflow_np CUDA backend on {device_name}", "",
             f"Device-to-device copy: {bandwidth / 1e9:.1f} GB/s. Float32 matrix product "
             f"({spec['square']}^3): PyTorch (TF32 off) "
             + (f"{torch_t['matmul square'] / 1e12:.2f} TFLOP/s" if torch_t else "n/a")
             + f", nflow_np's tiled kernel {gpu['matmul square'] / 1e12:.2f} TFLOP/s"
             + (f" ({gpu['matmul square'] / torch_t['matmul square']:.0%} of PyTorch)" if torch_t else "") + ". "
             f"At the flow's widest product ({spec['batch']} x {spec['hidden']} @ {spec['hidden']} x "
             f"{spec['hidden']}): PyTorch " + (f"{torch_t['matmul flow'] / 1e12:.2f}" if torch_t else "n/a")
             + f", tiled kernel {gpu['matmul flow'] / 1e12:.2f} TFLOP/s. The FLOP floor below uses "
             + ("PyTorch's" if torch_t else "the tiled kernel's") + " square rate.", "",
             "| workload | points | nflow_np cuda | PyTorch | cuda / PyTorch | CPU (numba) per point | "
             "CPU / cuda per point | bytes floor | FLOP floor | cuda / floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    p_wide = parameter_count(*wide[:3])
    for kind in ("log_prob", "sample"):
        for name, (dim, layers, hidden, n) in (("2-D", narrow), ("64-D", wide)):
            key = f"{kind} {name}"
            moved = n * dim * FLOAT + n * FLOAT            # the points in (or out), one log-density out
            flops = n * coupling_flops(dim, layers, hidden)
            floor = max(moved / bandwidth, flops / peak)
            per_point = gpu[key] / n
            lines.append(f"| {key} | {n:,} | {fmt_time(gpu[key])} | {fmt_time(torch_t.get(key) if torch_t else None)}"
                         f" | {ratio(gpu[key], torch_t.get(key) if torch_t else None)} | "
                         f"{fmt_time(cpu.get(key) if cpu else None)} | "
                         f"{ratio(cpu.get(key) if cpu else None, per_point)}"
                         f" | {fmt_time(moved / bandwidth)} | {fmt_time(flops / peak)} | {ratio(gpu[key], floor)} |")
    dim, layers, hidden, _ = wide
    batch = spec["batch"]
    moved = batch * dim * FLOAT + 6 * p_wide * FLOAT       # the batch in; parameters and moments read and written
    flops = 3 * batch * coupling_flops(dim, layers, hidden)    # forward, input gradients, weight gradients
    floor = max(moved / bandwidth, flops / peak)
    lines.append(f"| train step, batch {batch:,} | {batch:,} | {fmt_time(gpu['train step'])} | "
                 f"{fmt_time(torch_t.get('train step') if torch_t else None)} | "
                 f"{ratio(gpu['train step'], torch_t.get('train step') if torch_t else None)} | "
                 f"{fmt_time(cpu.get('train step') if cpu else None)} | "
                 f"{ratio(cpu.get('train step') if cpu else None, gpu['train step'] / batch)} | "
                 f"{fmt_time(moved / bandwidth)} | {fmt_time(flops / peak)} | {ratio(gpu['train step'], floor)} |")
    lines += ["", "Public NumPy-in/NumPy-out calls (host transfers included; `sample` draws on the device):", "",
              "| call | points | time | points / s |", "|---|---|---|---|"]
    for name, (_, _, _, n) in (("2-D", narrow), ("64-D", wide)):
        for key in (f"log_prob {name} (NumPy in/out)", f"sample {name} (NumPy out)"):
            lines.append(f"| {key} | {n:,} | {fmt_time(gpu[key])} | {n / gpu[key]:.3g} |")
    lines += ["", f"Medians of {repeats} calls after a warm-up. CPU: `backend=\"numba\"` on "
              f"{spec['cpu_n2']:,} / {spec['cpu_n64']:,} points and batches of {spec['cpu_batch']:,}, per point. "
              "Bytes floor: points in or out plus one log-density each (a step: its batch, and the parameters with "
              "Adam's two moments read and written); FLOP floor: the networks' multiply-adds (a step: 3 passes)."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and 2 repeats: a smoke test")
    parser.add_argument("--sim", action="store_true", help="tiny sizes under the CUDA simulator (no GPU needed)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU (numba) path")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick or args.sim else 5)
    spec = SIZES["sim" if args.sim else "quick" if args.quick else "full"]
    wide = (spec["dim"], 5, (spec["hidden"], spec["hidden"]), spec["n64"])
    narrow = (2, 4, (8, 8), spec["n2"])
    with nflow_np.backend("cuda"):      # raises here, saying what is missing, when there is no GPU
        pass
    from numba import cuda
    if args.sim:
        device_name = "the CUDA simulator (timings meaningless)"
    else:
        name = cuda.get_current_device().name
        device_name = name.decode() if isinstance(name, bytes) else str(name)
    print(f"timing on {device_name} ...", file=sys.stderr, flush=True)
    gpu = nflow_side(spec, args.repeats, wide, narrow)
    torch_t = None
    if not args.no_torch:
        try:
            import torch
            if torch.cuda.is_available():
                torch_t = torch_side(spec, args.repeats, wide, narrow)
            else:
                print("PyTorch sees no CUDA device: its columns read n/a", file=sys.stderr)
        except ImportError:
            print("PyTorch is not installed: its columns read n/a", file=sys.stderr)
    cpu = None if args.no_cpu else cpu_side(spec, args.repeats, wide, narrow)
    nsf = nsf_side(spec, args.repeats, not args.no_cpu)
    table = report(spec, gpu, torch_t, cpu, wide, narrow, device_name, args.repeats) + "\n" + nsf_report(nsf, spec)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
