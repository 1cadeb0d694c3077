#!/usr/bin/env bash
# medical3d demo. With ../shared/data/medical3d/la2018 (real cardiac MRI, expert left-atrium masks): a small slice of
# the LA2018 benchmark — Alice pretraining on the images of 16 training volumes (no labels), fine-tuning on 4 of
# them labelled, scored on 4 test volumes (Dice, Jaccard, HD95, ASD), with a picture of a test slice: image, truth,
# prediction. 2.5 min on 2 cores (measured: Dice 0.751 ± 0.010 on the 4 test volumes); the full benchmark is
# benchmarks/medical3d_la2018.py.
# Without it: the MNI152 T1 (nilearn) -> Alice pretraining -> few-label tissue segmentation (GM/WM), trained on one
# hemisphere and scored (Dice, HD95) on the other, then applied to the warped subjects (tissue volumes in mL).
set -euo pipefail
SSLKIT=${SSLKIT:-sslkit}
OUT=${OUT:-demo-out}/medical3d
LA2018=${LA2018:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/medical3d/la2018}
mkdir -p "$OUT"
export SSLKIT_CACHE_DIR=${SSLKIT_CACHE_DIR:-$OUT/cache}
if [ -f "$LA2018/datalist.json" ]; then
  # a smaller datalist of the same split, written by the demo: the first 16 training and 4 test volumes
  python3 - "$LA2018" "$OUT/la2018-demo.json" <<'EOF'
import json, sys
from pathlib import Path
root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
full = json.loads((root / "datalist.json").read_text())
absolute = lambda e: {k: str(root / v) for k, v in e.items()}
out.write_text(json.dumps({"name": "LA2018 demo", "labels": full["labels"],
                           "training": [absolute(e) for e in full["training"][:16]],
                           "test": [absolute(e) for e in full["test"][:4]]}, indent=1))
EOF
  LIST="$OUT/la2018-demo.json"
  # la2018: the CPU-sized recipe (1.25 mm, 48³ crops, tiny conv encoder, fine-tuning with foreground-balanced crops,
  # Dice + CE, augmentation). Pretraining reads the datalist's training images only (no labels; test images left out)
  $SSLKIT medical3d pretrain "$LIST" -r la2018 --out "$OUT/pretrain" --overwrite --set train.steps=60 \
    --set train.warmup_steps=6
  # fine-tuning: the first 4 training volumes labelled; the datalist's test volumes scored
  $SSLKIT medical3d finetune "$OUT/pretrain" "$LIST" --labelled 4 --out "$OUT/finetune" --overwrite \
    --set finetune.steps=150
  echo "pictures: $OUT/pretrain/plots/loss.png $OUT/finetune/plots/loss.png $OUT/finetune/plots/segmentation.png" >&2
  exit 0
fi
$SSLKIT medical3d sample-data "$OUT/data" --overwrite --subjects 4 --synthetic 0 --lesions 0
$SSLKIT medical3d pretrain "$OUT/data/mri/images" "$OUT/data/mri/unlabelled" -r mri-demo --out "$OUT/pretrain" --overwrite
$SSLKIT medical3d finetune "$OUT/pretrain" "$OUT/data/mri/images" "$OUT/data/mri/labels" --out "$OUT/finetune" --overwrite
# the fine-tuned network on the warped subjects it never saw labelled: label maps, tissue volumes in mL, and
# Dice/HD95 against their warped labels
$SSLKIT medical3d predict "$OUT/finetune" "$OUT/data/mri/unlabelled" --labels "$OUT/data/mri/subject_labels" \
  --out "$OUT/predict" --overwrite
echo "pictures: $OUT/pretrain/plots/loss.png $OUT/finetune/plots/loss.png $OUT/finetune/plots/segmentation.png" >&2
