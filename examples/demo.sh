#!/usr/bin/env bash
# `make demo`: sslkit's main job end to end on real bundled or generated data.
# Each domain adds examples/<domain>_demo.sh; this script runs the built-in method first.
set -euo pipefail
OUT="${OUT:-demo-out}"
SSLKIT="${SSLKIT:-sslkit}"
export OUT SSLKIT
mkdir -p "$OUT"
echo "== sslkit doctor" >&2
$SSLKIT doctor
echo "== built-in method: pretrain -> embed -> evaluate -> export" >&2
bash "$(dirname "$0")/toy_demo.sh"
for script in "$(dirname "$0")"/*_demo.sh; do
  name="$(basename "$script")"
  [ "$name" = "toy_demo.sh" ] && continue
  echo "== ${name%_demo.sh}" >&2
  bash "$script"
done
echo "demo finished: everything is under $OUT/" >&2
