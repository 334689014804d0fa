"""Fail when a benchmark got slower (or bigger) by more than a threshold between two commits.

Reads asv's stored results (``benchmarks/.asv/results/<machine>/<hash>-<env>.json``, asv 0.6's
format, plain JSON: asv itself is not needed) for two commits, pairs them up by machine and
environment, and prints one table per pair: every benchmark and parameter combination with its
value before and after and the ratio after / before. A ratio above ``1 + threshold`` is a
regression, for every kind of benchmark (time, peak memory, raw time), as ``asv compare`` counts
it; so is a benchmark that ran on the first commit and failed on the second.

    python benchmarks/regressions.py main HEAD                    # exit 1 on any regression > 10 %
    python benchmarks/regressions.py HEAD~1 HEAD --threshold 5    # > 5 %
    python benchmarks/regressions.py main HEAD --env virtualenv   # only environments whose name has this
    python benchmarks/regressions.py before.json after.json       # two result files, as they are

Commits are anything ``git rev-parse`` understands. Exit status: 0 no regression, 1 at least one,
2 nothing to compare (an unknown commit, no results of both commits on one machine and environment, or
no benchmark with a value on both sides).
``--ci`` counts a ratio over the threshold only when the two 99 % confidence intervals asv stored
do not overlap (results of ``--quick`` runs have one sample and an infinite interval; there the
threshold alone decides).
"""

import argparse
import glob
import itertools
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, ".asv", "results")

REGRESSION, FAILED = "REGRESSION", "FAILED"
# statuses that make the exit status 1
BAD = (REGRESSION, FAILED)


# ---------------------------------------------------------------------------
# reading asv's results

def load_results(path):
    """One asv results file as a dict: commit, env, machine and per benchmark its parameter
    combinations, values (None: failed, NaN: skipped), version and 99 % confidence intervals."""
    with open(path) as f:
        data = json.load(f)
    columns = data.get("result_columns")
    if columns is None or "results" not in data:
        raise ValueError(f"{path}: not an asv (0.6) results file (no result_columns)")
    benchmarks = {}
    for name, row in data["results"].items():
        entry = dict(zip(columns, row))
        values = entry.get("result")
        params = entry.get("params") or []
        combos = [", ".join(map(str, combo)) for combo in itertools.product(*params)] if params else [""]
        if values is None:
            values = [None] * len(combos)
        if len(values) != len(combos):
            raise ValueError(f"{path}: {name} has {len(values)} results for {len(combos)} parameter combinations")
        ci_a = entry.get("stats_ci_99_a") or [None] * len(combos)
        ci_b = entry.get("stats_ci_99_b") or [None] * len(combos)
        benchmarks[name] = {
            "version": entry.get("version"),
            "values": dict(zip(combos, values)),
            "ci": dict(zip(combos, zip(ci_a, ci_b))),
        }
    return {
        "path": path,
        "commit": data.get("commit_hash"),
        "env": data.get("env_name"),
        "machine": (data.get("params") or {}).get("machine"),
        "benchmarks": benchmarks,
    }


def load_units(results_dir):
    """Units per benchmark from asv's benchmarks.json next to the results, when there is one."""
    path = os.path.join(results_dir, "benchmarks.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return {name: b.get("unit") for name, b in data.items() if isinstance(b, dict)}


def resolve_commit(rev, repo):
    """The full hash of ``rev`` in the git repository ``repo``."""
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"regressions.py: {rev!r} is not a commit of {repo}", file=sys.stderr)
        raise SystemExit(2)
    return proc.stdout.strip()


def find_results(results_dir, commit):
    """Every results file of ``commit`` (a full hash) under ``results_dir``, all machines and environments."""
    found = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", commit[:8] + "-*.json"))):
        result = load_results(path)
        if result["commit"] == commit:
            found.append(result)
    return found


def pair_up(before, after, machine=None, env=None):
    """(before, after) result pairs that share a machine and an environment, optionally filtered."""
    keep = lambda r: ((machine is None or r["machine"] == machine)  # noqa: E731
                      and (env is None or env in (r["env"] or "")))
    index = {(r["machine"], r["env"]): r for r in before if keep(r)}
    return [(index[(r["machine"], r["env"])], r) for r in after if keep(r) and (r["machine"], r["env"]) in index]


# ---------------------------------------------------------------------------
# comparing

def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _interval(ci):
    """A usable confidence interval: two finite numbers (a --quick run stores (-inf, inf): one sample)."""
    return ci is not None and len(ci) == 2 and all(_number(v) and math.isfinite(v) for v in ci)


def classify(a, b, threshold, ci_a=None, ci_b=None):
    """Ratio ``b / a`` and status of one benchmark value: "" (within the threshold), REGRESSION,
    "improved", FAILED (ran before, fails after), "fixed", "failed" (both), "skipped"."""
    if a is None and b is None:
        return None, "failed"
    if b is None:
        return None, FAILED if _number(a) else "failed"
    if a is None:
        return None, "fixed" if _number(b) else "failed"
    if not (_number(a) and _number(b)):
        return None, "skipped"
    if a == 0:
        return (1.0 if b == 0 else math.inf), ("" if b == 0 else REGRESSION)
    ratio = b / a
    if ratio > 1 + threshold:
        if _interval(ci_a) and _interval(ci_b) and ci_b[0] <= ci_a[1]:
            return ratio, "noise"  # over the threshold, but the confidence intervals overlap
        return ratio, REGRESSION
    if ratio < 1 / (1 + threshold):
        return ratio, "improved"
    return ratio, ""


MISSING = object()  # a benchmark or parameter combination one side does not have


def compare(before, after, threshold=0.10, use_ci=False):
    """Rows (benchmark, params, before, after, ratio, status) over the benchmarks of both results. A
    benchmark or combination only one side has is "new" or "gone" (its other value ``MISSING``); one whose
    code changed between the runs (another asv version hash) is "changed", not compared."""
    rows = []
    for name in sorted(set(before["benchmarks"]) | set(after["benchmarks"])):
        ba = before["benchmarks"].get(name, {"values": {}, "ci": {}, "version": None})
        bb = after["benchmarks"].get(name, {"values": {}, "ci": {}, "version": None})
        combos = list(ba["values"]) + [c for c in bb["values"] if c not in ba["values"]]
        for combo in combos:
            a, b = ba["values"].get(combo, MISSING), bb["values"].get(combo, MISSING)
            if a is MISSING or b is MISSING:
                rows.append((name, combo, a, b, None, "new" if a is MISSING else "gone"))
            elif ba["version"] and bb["version"] and ba["version"] != bb["version"]:
                rows.append((name, combo, a, b, None, "changed"))
            else:
                cis = (ba["ci"].get(combo), bb["ci"].get(combo)) if use_ci else (None, None)
                rows.append((name, combo, a, b, *classify(a, b, threshold, *cis)))
    return rows


# ---------------------------------------------------------------------------
# printing

def _unit(name, units):
    unit = units.get(name)
    if unit:
        return unit
    last = name.rsplit(".", 1)[-1]
    if last.startswith(("time_", "timeraw_")):
        return "seconds"
    if last.startswith(("peakmem_", "mem_")):
        return "bytes"
    return ""


def fmt_value(value, unit=""):
    if value is MISSING:
        return "-"
    if value is None:
        return "failed"
    if not _number(value):
        return "n/a"
    if unit == "seconds":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g}{suffix}"
    if unit == "bytes":
        for scale, suffix in ((2**30, "G"), (2**20, "M"), (2**10, "k"), (1, "")):
            if abs(value) >= scale or scale == 1:
                return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}"


def format_table(rows, units=None):
    units = units or {}
    head = ("benchmark", "before", "after", "ratio", "")
    body = []
    for name, combo, a, b, ratio, status in rows:
        label = f"{name}({combo})" if combo else name
        unit = _unit(name, units)
        body.append((label, fmt_value(a, unit), fmt_value(b, unit), "" if ratio is None else f"{ratio:.3f}",
                     status))
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) if i in (0, 4) else v.rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in body])


# ---------------------------------------------------------------------------

def _side(arg, results_dir, repo):
    """The results of one side: a results file as given, or every file of a commit."""
    if arg.endswith(".json") and os.path.isfile(arg):
        return [load_results(arg)], arg
    commit = resolve_commit(arg, repo)
    return find_results(results_dir, commit), f"{arg} ({commit[:8]})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="commit (or asv results .json file) to compare against")
    parser.add_argument("after", help="commit (or asv results .json file) that should not be slower")
    parser.add_argument("--threshold", type=float, default=10.0,
                        help="percent: a ratio above 1 + threshold/100 is a regression (default 10)")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="asv results folder (default: %(default)s)")
    parser.add_argument("--repo", default=os.path.dirname(HERE), help="git repository the commits are in")
    parser.add_argument("--machine", help="only this asv machine name")
    parser.add_argument("--env", help="only environments whose name contains this")
    parser.add_argument("--ci", action="store_true",
                        help="a ratio over the threshold counts only if the 99%% confidence intervals do not overlap")
    parser.add_argument("--allow-failures", action="store_true",
                        help="a benchmark that ran before and fails after is reported, not counted")
    args = parser.parse_args(argv)
    if args.threshold < 0:
        parser.error("--threshold must not be negative")
    threshold = args.threshold / 100

    before, label_a = _side(args.before, args.results, args.repo)
    after, label_b = _side(args.after, args.results, args.repo)
    if len(before) == 1 and len(after) == 1 and (args.before.endswith(".json") or args.after.endswith(".json")):
        pairs = [(before[0], after[0])]
    else:
        pairs = pair_up(before, after, args.machine, args.env)
    if not pairs:
        print(f"regressions.py: no results to compare for {label_a} and {label_b} on one machine and environment "
              f"in {args.results}", file=sys.stderr)
        for label, side in ((label_a, before), (label_b, after)):
            have = ", ".join(f"{r['machine']}/{r['env']}" for r in side) or "none"
            print(f"  {label}: {have}", file=sys.stderr)
        return 2

    bad, compared = [], 0
    units = load_units(args.results)
    for a, b in pairs:
        print(f"machine {b['machine']}, environment {b['env']}")
        print(f"before {label_a}, after {label_b}; ratio = after / before, threshold +{args.threshold:g} %")
        rows = compare(a, b, threshold, use_ci=args.ci)
        print(format_table(rows, units))
        print()
        compared += sum(ratio is not None for *_, ratio, _ in rows)
        counted = (REGRESSION,) if args.allow_failures else BAD
        bad += [(b["env"], name, combo, status) for name, combo, _, _, _, status in rows if status in counted]
    if bad:
        print(f"{len(bad)} regression(s) over {args.threshold:g} %:")
        for env, name, combo, status in bad:
            print(f"  {status.lower()}: {name}{f'({combo})' if combo else ''}  [{env}]")
        return 1
    if not compared:
        print("nothing compared: no benchmark has a value for both commits", file=sys.stderr)
        return 2
    print(f"no regression over {args.threshold:g} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
