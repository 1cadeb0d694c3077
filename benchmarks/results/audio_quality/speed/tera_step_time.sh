#!/bin/bash
# tera-fsdd step time: dropout 0.1 vs 0, fp32 vs bf16 (30 steps each on a 300-clip FSDD subset: every 10th file;
# median clips/s of steps 6-30). Run from the repo root under the heavy lock (~45 s):
#   flock /tmp/sslkit-heavy.lock bash benchmarks/results/audio_quality/speed/tera_step_time.sh
set -euo pipefail
W=${W:-/tmp/tera-step-time}; FSDD=../shared/data/audio/fsdd/recordings
mkdir -p "$W/sub"
ls "$FSDD" | awk 'NR%10==0' | head -300 | while read -r f; do ln -sf "$(realpath "$FSDD/$f")" "$W/sub/"; done
for cfg in "fp32 0.1" "bf16 0.1" "fp32 0.0" "bf16 0.0"; do
  set -- $cfg
  out=$W/$1_$2
  .venv/bin/python -m sslkit audio pretrain "$W/sub" --recipe tera-fsdd --set train.device=cpu \
    --set train.steps=30 --set train.log_every=1 --set train.precision=$1 --set model.dropout=$2 \
    --set train.checkpoint_every=1000 --out "$out" --overwrite >/dev/null 2>"$out.err"
  .venv/bin/python - "$out" "$1" "$2" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][5:]
sps = statistics.median(r["samples_per_s"] for r in rows)
print(f"precision {sys.argv[2]} dropout {sys.argv[3]}: {sps:.1f} samples/s = {32/sps:.3f} s/step (batch 32), loss@30 {rows[-1]['loss']:.4f}")
PY
done
