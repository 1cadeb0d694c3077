#!/usr/bin/env bash
# The built-in test method (VICReg on synthetic vectors), end to end.
set -euo pipefail
OUT="${OUT:-demo-out}"; SSLKIT="${SSLKIT:-sslkit}"
run="$OUT/toy-run"
$SSLKIT toy pretrain --recipe tiny --out "$run" --overwrite
$SSLKIT toy embed "$run" --out "$OUT/toy-embeddings.parquet" --overwrite
$SSLKIT toy evaluate "$run" --seeds 3
$SSLKIT toy export "$run" --out "$OUT/toy-encoder" --overwrite
echo "toy run folder: $run (loss curve: $run/plots/loss.png)" >&2
