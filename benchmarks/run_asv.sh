#!/usr/bin/env bash
# Run the asv suite against the current Python and the working tree, offline.
#   ./run_asv.sh                      # full run (minutes; use a quiet machine)
#   ./run_asv.sh --quick              # every benchmark once: a smoke test
#   ./run_asv.sh --quick --bench W2   # only benchmarks whose name matches the regex
# Extra arguments go to `asv run`. Results: .asv/results; `asv publish && asv preview` for HTML (.asv/html).
# This is the quick mode. For history (each commit built and installed in an environment asv makes), run
# asv itself from benchmarks/, e.g. `asv run HEAD~20..HEAD` or `asv continuous main HEAD` (README.md).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
# asv wants a machine description once per machine; --yes takes the detected defaults.
"$PY" -m asv machine --yes >/dev/null
# --set-commit-hash files the results under HEAD (a dirty tree is what gets timed); --show-stderr
# so a failing setup (e.g. a missing backend) says why.
exec "$PY" -m asv run --python=same --set-commit-hash "$(git rev-parse HEAD)" --show-stderr "$@"
