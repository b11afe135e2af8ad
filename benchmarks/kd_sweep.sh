#!/usr/bin/env bash
# Distillation settings for the default student, chosen on the validation split over several seeds:
# one teacher per seed (the default teacher), then the student alone and distilled with each setting,
# at two epoch counts. Every run is a separate process, JOBS at a time: meant for a machine with many
# cores (and a GPU, which `runtime.device: auto` picks); on the 2-core CPU machine use JOBS=1.
#
#   OUT=/tmp/kd benchmarks/kd_sweep.sh            # results: $OUT/table.md, $OUT/*.jsonl
#   SEEDS="0 1 2" EPOCHS="20" JOBS=1 benchmarks/kd_sweep.sh
#
# Reads data/prepared (run `dvc repro prepare` first). Each line of the table is mean +- std over seeds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kd_sweep}
PY=${PYTHON:-python}
SEEDS=${SEEDS:-0 1 2 3 4}
EPOCHS=${EPOCHS:-20 30}
JOBS=${JOBS:-12}
SETTINGS=${SETTINGS:-kd-T2 kd-T3 kd-T4 kd-T2-w0.75 dist}
TEACHERS=${TEACHERS:-$OUT/teachers}
mkdir -p "$OUT/logs" "$TEACHERS"

# one teacher per seed (skipped when already there)
for s in $SEEDS; do
  [ -f "$TEACHERS/lenet5x4-e20-$s/model.json" ] && continue
  echo "$PY benchmarks/compression_sweep.py teachers --names lenet5x4-e20 --seeds $s --keep $TEACHERS" \
    "--jsonl $OUT/teachers-$s.jsonl > $OUT/logs/teacher-$s.log 2>&1"
done | xargs -d '\n' -P "$JOBS" -I{} bash -c '{}'

# per seed and epoch count: the student alone once, then each setting distilled (one process each)
for e in $EPOCHS; do
  for s in $SEEDS; do
    common="--seeds $s --teacher $TEACHERS/lenet5x4-e20-{seed} --set distill.epochs=$e"
    echo "$PY benchmarks/compression_sweep.py students --names lenet5-h32 --skip-distilled $common" \
      "--jsonl $OUT/alone-$e-$s.jsonl > $OUT/logs/alone-$e-$s.log 2>&1"
    for setting in $SETTINGS; do
      echo "$PY benchmarks/compression_sweep.py students --names 'lenet5-h32|$setting' --skip-alone $common" \
        "--jsonl $OUT/$setting-$e-$s.jsonl > $OUT/logs/$setting-$e-$s.log 2>&1"
    done
  done
done | xargs -d '\n' -P "$JOBS" -I{} bash -c '{}'

files=$(ls "$OUT"/*.jsonl | paste -sd, -)
$PY benchmarks/compression_sweep.py table --jsonl "$files" > "$OUT/table.md"
cat "$OUT/table.md"
