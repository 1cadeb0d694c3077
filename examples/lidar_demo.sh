#!/usr/bin/env bash
# lidar demo (< 2 min on CPU): simulate a roadside sensor, pseudo-label with three statistical teachers,
# train the student briefly, and score the labels against the simulator's truth.
# `make demo` sets SSLKIT (the sslkit command) and OUT (an output folder).
set -euo pipefail
SSLKIT=${SSLKIT:-sslkit}
OUT=${OUT:-demo-out}/lidar
rm -rf "$OUT" && mkdir -p "$OUT"

$SSLKIT lidar simulate "$OUT/seq" --frames 40 --beams 32 --seed 7
$SSLKIT lidar pseudo-label "$OUT/seq" --recipe pointpillars-tiny --out "$OUT/pseudo" --gt "$OUT/seq/label_2"
# The student: a short CPU run of the tiny recipe (the benchmark trains pointpillars-tiny on a GPU).
$SSLKIT lidar train-student "$OUT/seq" "$OUT/pseudo" --recipe tiny --set train.steps=12 --set train.log_every=1 \
    --out "$OUT/run"
$SSLKIT lidar render "$OUT/seq/velodyne/000020.bin" --gt "$OUT/seq" --labels "$OUT/pseudo" \
    --out "$OUT/run/plots/bev.png"
$SSLKIT lidar evaluate "$OUT/pseudo/combined" "$OUT/seq/label_2" --out "$OUT/run/evaluation.json"
echo "pictures: $OUT/run/plots/loss.png (student loss) and $OUT/run/plots/bev.png (truth white, pseudo-labels red)"
