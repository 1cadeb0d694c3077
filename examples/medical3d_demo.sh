#!/usr/bin/env bash
# medical3d demo: real MNI152 T1 (nilearn) -> Alice pretraining -> few-label tissue segmentation (GM/WM),
# trained on one hemisphere and scored (Dice, HD95) on the other, then applied to the warped subjects (tissue
# volumes in mL). Pictures in the run folders.
set -euo pipefail
SSLKIT=${SSLKIT:-sslkit}
OUT=${OUT:-demo-out}/medical3d
mkdir -p "$OUT"
export SSLKIT_CACHE_DIR=${SSLKIT_CACHE_DIR:-$OUT/cache}
$SSLKIT medical3d sample-data "$OUT/data" --overwrite --subjects 4 --synthetic 0 --lesions 0
$SSLKIT medical3d pretrain "$OUT/data/mri/images" "$OUT/data/mri/unlabelled" -r mri-demo --out "$OUT/pretrain" --overwrite
$SSLKIT medical3d finetune "$OUT/pretrain" "$OUT/data/mri/images" "$OUT/data/mri/labels" --out "$OUT/finetune" --overwrite
# the fine-tuned network on the warped subjects it never saw labelled: label maps, tissue volumes in mL, and
# Dice/HD95 against their warped labels
$SSLKIT medical3d predict "$OUT/finetune" "$OUT/data/mri/unlabelled" --labels "$OUT/data/mri/subject_labels" \
  --out "$OUT/predict" --overwrite
echo "pictures: $OUT/pretrain/plots/loss.png $OUT/finetune/plots/loss.png $OUT/finetune/plots/segmentation.png" >&2
