#!/usr/bin/env bash
# Graph demo: SCGC* node clustering on Cora (real citation graph), then the evaluation table
# (k-means on raw / propagated features vs SCGC* embeddings and its learned soft assignment).
# Pictures: $OUT/graph/run/plots/loss.png and plots/clusters.png.
set -euo pipefail
SSLKIT=${SSLKIT:-sslkit}
OUT=${OUT:-demo-out}
CORA=${CORA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/graph/cora}
K=7
if [ ! -d "$CORA" ]; then
  # a fresh machine without the benchmark data: use the graph sslkit ships (SBM with labels)
  echo "Cora not found at $CORA; using the bundled SBM sample graph (set CORA=... to use Cora)" >&2
  $SSLKIT graph sample-data "$OUT/graph/data" --overwrite
  CORA="$OUT/graph/data/sbm"
  K=$(tail -n +2 "$CORA/labels.csv" | cut -d, -f2 | sort -u | wc -l)
fi
RUN="$OUT/graph/run"
$SSLKIT graph pretrain "$CORA" --recipe scgc-star --clusters "$K" --out "$RUN" --overwrite --set train.steps=80 --set loss.cluster_warmup=50
$SSLKIT graph cluster "$RUN" "$CORA" --out "$OUT/graph/clusters.csv" --overwrite
$SSLKIT graph evaluate "$RUN" "$CORA" --seeds 3
echo "pictures: $RUN/plots/loss.png $RUN/plots/clusters.png"
