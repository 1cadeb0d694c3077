#!/usr/bin/env bash
# The one GPU check (`make gpu-check`), within 8 minutes on one GPU:
#   1. every CUDA-marked test of every domain, in one pytest call (no -x; one summary line per test);
#   2. a short bf16 pretraining of each domain's realistic recipe (scripts/gpu_check.py): samples/s, peak GPU
#      memory and data-wait per domain in one table, written as JSON to $OUT/gpu-check.json when OUT is set.
# Exits non-zero if any test or any domain fails. Without a GPU it says so and exits 2 (nothing to check).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible (torch.cuda.is_available() is False) — run this on a GPU machine" >&2
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
START=$(date +%s)
"$PY" -m pytest -m gpu -q -rA -p no:cacheprovider --timeout 300 ${OUT:+--junitxml "$OUT/gpu-tests.xml"} tests
TESTS=$?
echo "CUDA tests: exit $TESTS after $(( $(date +%s) - START )) s" >&2
"$PY" scripts/gpu_check.py "$@"
TABLE=$?
echo "GPU check: tests exit $TESTS, pretraining table exit $TABLE, $(( $(date +%s) - START )) s in all" >&2
[ $TESTS -eq 0 ] && [ $TABLE -eq 0 ]
