"""benchmarks/regressions.py on hand-made asv results files: parsing, ratios, the threshold, exit status.

No asv run and no asv install: the files are asv 0.6's plain JSON format, written here.
"""

import importlib.util
import json
import math
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "regressions.py")
_spec = importlib.util.spec_from_file_location("bench_regressions", _PATH)
reg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reg)

COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a", "stats_ci_99_b",
           "stats_q_25", "stats_q_75", "stats_number", "stats_repeat", "samples", "profile"]
BEFORE = "a" * 40
AFTER = "b" * 40


def results_file(folder, commit, results, env="virtualenv-py3.11", machine="box"):
    """Write one asv results file; ``results`` maps a benchmark name to its row (asv's result columns)."""
    path = folder / machine / f"{commit[:8]}-{env}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "commit_hash": commit, "env_name": env, "date": 0, "params": {"machine": machine, "python": "3.11"},
        "python": "3.11", "requirements": {}, "env_vars": {}, "result_columns": COLUMNS, "results": results,
        "durations": {}, "version": 2}))
    return str(path)


def fixture_pair(tmp_path, slow=1.25):
    """Before/after files: a plain benchmark 25 % slower, a parametrized one with one combination faster
    and one within 10 %, a peak-memory benchmark unchanged, a failure and a skip (NaN)."""
    before = {
        "startup.timeraw_import_numpy": [[0.100], [], "v1", 0, 1.0],
        "training.W2RealNVP8D.time_steps": [[2.0, 0.40], [["'numpy'", "'numba'"]], "v2"],
        "training.W2RealNVP8D.peakmem_steps": [[100e6, 90e6], [["'numpy'", "'numba'"]], "v3"],
        "inference.W6Million2D.time_sample": [[1.0, 0.5], [["'numpy'", "'numba'"]], "v4"],
        "startup.ColdStart.timeraw_first_fit_log_prob_sample": [[70.0, 80.0], [["'RealNVP'", "'NSF'"]], "v5"],
    }
    after = {
        "startup.timeraw_import_numpy": [[0.100 * slow], [], "v1", 0, 1.0],
        "training.W2RealNVP8D.time_steps": [[1.0, 0.42], [["'numpy'", "'numba'"]], "v2"],
        "training.W2RealNVP8D.peakmem_steps": [[100e6, 90e6], [["'numpy'", "'numba'"]], "v3"],
        "inference.W6Million2D.time_sample": [[1.0, None], [["'numpy'", "'numba'"]], "v4"],
        "startup.ColdStart.timeraw_first_fit_log_prob_sample": [[float("nan"), 8.0], [["'RealNVP'", "'NSF'"]],
                                                                 "v5"],
    }
    return results_file(tmp_path, BEFORE, before), results_file(tmp_path, AFTER, after)


def _by_key(rows):
    return {(name, combo): (a, b, ratio, status) for name, combo, a, b, ratio, status in rows}


def test_load_expands_parameter_combinations(tmp_path):
    before, _ = fixture_pair(tmp_path)
    r = reg.load_results(before)
    assert (r["commit"], r["env"], r["machine"]) == (BEFORE, "virtualenv-py3.11", "box")
    assert r["benchmarks"]["startup.timeraw_import_numpy"]["values"] == {"": 0.1}
    assert r["benchmarks"]["training.W2RealNVP8D.time_steps"]["values"] == {"'numpy'": 2.0, "'numba'": 0.4}
    assert r["benchmarks"]["training.W2RealNVP8D.time_steps"]["version"] == "v2"


def test_load_two_parameters_and_a_failed_benchmark(tmp_path):
    path = results_file(tmp_path, BEFORE, {
        "m.T.time_x": [[1.0, 2.0, 3.0, 4.0], [["1", "2"], ["'a'", "'b'"]], "v"],
        "m.T.time_broken": [None, [["1", "2"]], "v"],
    })
    r = reg.load_results(path)
    assert r["benchmarks"]["m.T.time_x"]["values"] == {"1, 'a'": 1.0, "1, 'b'": 2.0, "2, 'a'": 3.0, "2, 'b'": 4.0}
    assert r["benchmarks"]["m.T.time_broken"]["values"] == {"1": None, "2": None}


def test_load_refuses_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="not an asv"):
        reg.load_results(str(path))


@pytest.mark.parametrize("a, b, status", [
    (1.0, 1.10, ""),            # exactly +10 %: not more than the threshold
    (1.0, 1.1001, "REGRESSION"),
    (1.0, 0.95, ""),
    (1.0, 0.5, "improved"),
    (1.0, None, "FAILED"),      # ran before, fails after
    (None, 1.0, "fixed"),
    (None, None, "failed"),
    (float("nan"), 1.0, "skipped"),
    (0.0, 0.0, ""),
])
def test_classify_threshold(a, b, status):
    assert reg.classify(a, b, 0.10)[1] == status


def test_classify_confidence_intervals():
    # +50 %, but the intervals overlap: noise, when the caller asks for the CI test
    assert reg.classify(1.0, 1.5, 0.10, (0.5, 2.0), (1.0, 2.5)) == (1.5, "noise")
    assert reg.classify(1.0, 1.5, 0.10, (0.9, 1.1), (1.4, 1.6)) == (1.5, "REGRESSION")
    # one side without intervals (a --quick run): the threshold alone decides
    assert reg.classify(1.0, 1.5, 0.10, (0.9, 1.1), (None, None)) == (1.5, "REGRESSION")
    # a --quick sample: asv stores an infinite interval, which says nothing
    assert reg.classify(1.0, 1.5, 0.10, (-math.inf, math.inf), (-math.inf, math.inf)) == (1.5, "REGRESSION")


def test_compare_rows(tmp_path):
    before, after = (reg.load_results(p) for p in fixture_pair(tmp_path))
    rows = _by_key(reg.compare(before, after, 0.10))
    ratio, status = rows[("startup.timeraw_import_numpy", "")][2:]
    assert status == "REGRESSION" and math.isclose(ratio, 1.25)
    assert rows[("training.W2RealNVP8D.time_steps", "'numpy'")][2:] == (0.5, "improved")
    assert rows[("training.W2RealNVP8D.time_steps", "'numba'")][3] == ""
    assert rows[("training.W2RealNVP8D.peakmem_steps", "'numpy'")][2:] == (1.0, "")
    assert rows[("inference.W6Million2D.time_sample", "'numba'")][3] == "FAILED"
    assert rows[("startup.ColdStart.timeraw_first_fit_log_prob_sample", "'RealNVP'")][3] == "skipped"
    assert rows[("startup.ColdStart.timeraw_first_fit_log_prob_sample", "'NSF'")][2:] == (0.1, "improved")
    # a higher threshold lets the +25 % pass
    assert _by_key(reg.compare(before, after, 0.30))[("startup.timeraw_import_numpy", "")][3] == ""


def test_compare_new_gone_and_changed(tmp_path):
    before = reg.load_results(results_file(tmp_path, BEFORE, {
        "m.time_old": [[1.0], [], "v"], "m.time_edit": [[1.0], [], "v1"], "m.time_p": [[1.0], [["1"]], "v"]}))
    after = reg.load_results(results_file(tmp_path, AFTER, {
        "m.time_new": [[1.0], [], "v"], "m.time_edit": [[5.0], [], "v2"], "m.time_p": [[1.0, 9.0], [["1", "2"]], "v"]}))
    rows = _by_key(reg.compare(before, after))
    assert rows[("m.time_old", "")][3] == "gone"
    assert rows[("m.time_new", "")][3] == "new"
    assert rows[("m.time_edit", "")][2:] == (None, "changed")
    assert rows[("m.time_p", "1")][3] == "" and rows[("m.time_p", "2")][3] == "new"
    assert "changed" in reg.format_table(reg.compare(before, after))


def test_format_values():
    assert reg.fmt_value(0.0123, "seconds") == "12.3ms"
    assert reg.fmt_value(73.4, "seconds") == "73.4s"
    assert reg.fmt_value(3 * 2**20, "bytes") == "3M"
    assert reg.fmt_value(None, "seconds") == "failed"
    assert reg.fmt_value(reg.MISSING) == "-"


def test_main_on_files_exit_status(tmp_path, capsys):
    before, after = fixture_pair(tmp_path)
    assert reg.main([before, after]) == 1
    out = capsys.readouterr().out
    assert "startup.timeraw_import_numpy" in out and "1.25" in out and "REGRESSION" in out
    assert "failed: inference.W6Million2D.time_sample('numba')" in out
    # failures reported but not counted, and a threshold over the +25 %: passes
    assert reg.main([before, after, "--threshold", "30", "--allow-failures"]) == 0
    assert "no regression over 30 %" in capsys.readouterr().out
    # nothing slower at all
    same = results_file(tmp_path, AFTER, {"startup.timeraw_import_numpy": [[0.1], [], "v1"]}, env="other")
    assert reg.main([before, same]) == 0


def test_main_finds_commits_in_a_results_folder(tmp_path, capsys, monkeypatch):
    fixture_pair(tmp_path)
    # an environment only one commit has results for is not paired
    results_file(tmp_path, AFTER, {"startup.timeraw_import_numpy": [[9.0], [], "v1"]}, env="existing-py")
    monkeypatch.setattr(reg, "resolve_commit", lambda rev, repo: {"A": BEFORE, "B": AFTER}[rev])
    assert reg.main(["A", "B", "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "environment virtualenv-py3.11" in out and "existing-py" not in out
    assert reg.main(["A", "B", "--results", str(tmp_path), "--env", "nothing-like-this"]) == 2
    assert "no results to compare" in capsys.readouterr().err


def test_main_nothing_in_common_exits_2(tmp_path, capsys):
    before = results_file(tmp_path, BEFORE, {"m.time_a": [[1.0], [], "v"]})
    after = results_file(tmp_path, AFTER, {"m.time_b": [[1.0], [], "v"]})
    assert reg.main([before, after]) == 2
    assert "nothing compared" in capsys.readouterr().err


def test_main_unknown_commit_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        reg.main(["no-such-revision", "HEAD", "--repo", str(tmp_path), "--results", str(tmp_path)])
    assert exc.value.code == 2
