#!/usr/bin/env bash
# Tabular demo (< 2 min on a CPU): T-JEPA on 4,000 rows of UCI Adult, then embed and evaluate.
# `make demo` sets SSLKIT (the sslkit command) and OUT (an output folder).
set -euo pipefail
SSLKIT=${SSLKIT:-sslkit}
OUT=${OUT:-demo-out}
D="$OUT/tabular"
mkdir -p "$D"

$SSLKIT tabular sample-data "$D/data" --overwrite                   # adult.csv, breast_cancer.csv, wine.csv
head -n 4001 "$D/data/adult.csv" > "$D/adult4k.csv"                  # header + 4,000 rows keeps the demo short

# Pretrain on the features only (income is the label: never seen here), a small T-JEPA for 120 steps.
$SSLKIT tabular pretrain "$D/adult4k.csv" --target income --id id --recipe t-jepa-small \
    --set train.steps=120 --set train.warmup_steps=10 --set train.batch_size=128 --set train.log_every=20 --out "$D/run" --overwrite

$SSLKIT tabular embed "$D/run" "$D/adult4k.csv" --out "$D/embeddings.parquet" --overwrite

# Raw features vs embeddings vs both: logistic regression, MLP and HistGradientBoosting, 2 seeds.
$SSLKIT tabular evaluate "$D/run" "$D/adult4k.csv" --target income --seeds 2 --jobs 2
echo "pictures: $D/run/plots/loss.png $D/run/plots/embedding_map.png $D/run/plots/evaluation.png"
