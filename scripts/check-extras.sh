#!/usr/bin/env bash
# Does `pip install 'sslkit[<domain>]'` work for each domain alone? Builds the wheel once; for each extra,
# installs it into a fresh virtual environment and runs `sslkit --help`, `sslkit doctor`, and that domain's
# sample data → tiny pretrain → embed. torch is installed once, into a base environment that every per-extra
# environment sees through a .pth file (pip treats it as installed), so the check takes minutes, not an hour.
#
#   scripts/check-extras.sh [DOMAIN...]        (default: all six; `make check-extras`)
# Work folder: $CHECK_DIR (default .check-extras); a table of results at the end; exit 1 if any step failed.
# Each domain's environment is removed once measured (KEEP_ENVS=1 keeps them); the torch base (~8 GB) stays for
# the next run; `make clean` removes it all.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${CHECK_DIR:-$ROOT/.check-extras}
PY=${PYTHON:-python3}
DOMAINS=("$@")
[ ${#DOMAINS[@]} -eq 0 ] && DOMAINS=(medical3d pathology audio graph lidar tabular)
mkdir -p "$WORK"
export PIP_DISABLE_PIP_VERSION_CHECK=1

bash scripts/system-deps.sh || exit 1
rm -rf "$WORK/dist" && "$PY" -m pip wheel -q --no-deps -w "$WORK/dist" . >/dev/null || { echo "wheel build failed" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/sslkit-*.whl)
TORCH=$(grep -E '^torch==' constraints.txt)
if [ ! -x "$WORK/base/bin/python" ] || ! "$WORK/base/bin/python" -c "import torch" 2>/dev/null; then
  "$PY" -m venv "$WORK/base" && "$WORK/base/bin/python" -m pip install -q -c constraints.txt "$TORCH" || exit 1
fi
BASE_SITE=$("$WORK/base/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# one domain's smoke commands, run inside its environment with $D as scratch
smoke() {
  local d=$1 D=$2
  case $d in
    graph)     sslkit graph sample-data "$D/data" && sslkit graph pretrain "$D/data/sbm" -r tiny --clusters 4 --out "$D/run" &&
               sslkit graph embed "$D/run" "$D/data/sbm" --out "$D/e.parquet" ;;
    tabular)   sslkit tabular sample-data "$D/data" && sslkit tabular pretrain "$D/data/wine.csv" --target target --id id \
                 -r tiny --out "$D/run" && sslkit tabular embed "$D/run" "$D/data/wine.csv" --out "$D/e.parquet" ;;
    medical3d) sslkit medical3d sample-data "$D/data" --resolution 2 --subjects 1 --synthetic 2 --size 32 --lesions 0 &&
               sslkit medical3d pretrain "$D/data/synthetic/images" -r tiny --set train.steps=2 --out "$D/run" &&
               sslkit medical3d embed "$D/run" "$D/data/synthetic/images" --out "$D/e.parquet" ;;
    lidar)     sslkit lidar simulate "$D/seq" --frames 10 --beams 32 && sslkit lidar pretrain "$D/seq" -r tiny \
                 --set train.steps=2 --out "$D/run" && sslkit lidar embed "$D/run" "$D/seq" --out "$D/e.parquet" ;;
    audio)     sslkit audio sample-data "$D/data" && sslkit audio pretrain "$D/data" -r tiny --set train.steps=2 \
                 --out "$D/run" && sslkit audio embed "$D/run" "$D/data" --out "$D/e.parquet" ;;
    pathology) sslkit pathology sample-data "$D/data" && sslkit pathology pretrain "$D/data" -r tiny \
                 --set train.steps=2 --out "$D/run" && sslkit pathology embed "$D/run" "$D/data" --out "$D/e.parquet" ;;
  esac
}

declare -A RESULT
for d in "${DOMAINS[@]}"; do
  ENV="$WORK/env-$d"; LOG="$WORK/$d.log"; S=$(date +%s)
  rm -rf "$ENV" "$WORK/scratch-$d"; mkdir -p "$WORK/scratch-$d"
  "$PY" -m venv "$ENV" && echo "$BASE_SITE" > "$("$ENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_sslkit_base.pth"
  step="install"
  if "$ENV/bin/python" -m pip install -q -c constraints.txt "$WHEEL[$d]" >"$LOG" 2>&1; then
    step="run"
    ( export PATH="$ENV/bin:$PATH"; set -e
      sslkit --help >/dev/null; sslkit doctor --json > "$WORK/scratch-$d/doctor.json"
      "$ENV/bin/python" -c "import json,sys; d=json.load(open(sys.argv[1]))['domains'][sys.argv[2]]; sys.exit(0 if d['ok'] else 'doctor: ' + str(d))" \
        "$WORK/scratch-$d/doctor.json" "$d"
      smoke "$d" "$WORK/scratch-$d" ) >>"$LOG" 2>&1 && step="ok"
  fi
  SIZE=$(du -sh "$ENV" | cut -f1)
  RESULT[$d]="$step	$(( $(date +%s) - S ))s	$SIZE"
  [ -n "${KEEP_ENVS:-}" ] || rm -rf "$ENV" "$WORK/scratch-$d"   # ~0.7 GB each; the log stays
  echo "$d: $step (log: $LOG)" >&2
done

printf '\n%-10s %-8s %-8s %s\n' domain result time env-size
fail=0
for d in "${DOMAINS[@]}"; do
  IFS=$'\t' read -r r t s <<<"${RESULT[$d]}"
  printf '%-10s %-8s %-8s %s\n' "$d" "$r" "$t" "$s"
  [ "$r" = ok ] || fail=1
done
printf 'base environment (torch): %s\n' "$(du -sh "$WORK/base" | cut -f1)"
exit $fail
