#!/usr/bin/env bash
# The dev-split sweep of feedback settings (docs/results/feedback-sweep/README.md). One store for all settings, so
# the teacher's candidates, the warm start, the student's samples and every judgment are made once and reused.
# Usage: docs/results/feedback-sweep/run.sh STORE OUT [config.toml ...]   (default: every *.toml here, in order)
set -euo pipefail
db=$1; out=$2; shift 2
here=$(dirname "$0")
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=("$here"/*.toml)
for c in "${configs[@]}"; do
  echo "=== $(date -u +%H:%M:%S) $c"
  /usr/bin/time -f "wall %e s, peak %M KB" python -m programs.compile --config "$c" --db "$db" --out "$out"
  cp "$out/report.md" "$out/report-$(basename "$c" .toml).md"
done
