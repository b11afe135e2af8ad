#!/usr/bin/env bash
# Every method of the README's "Methods" section for several seeds, as queued DVC experiments, run one
# after another, then tabulated over seeds by `distillops report` (reports/methods.md and .png, also
# logged to MLflow).
#
#   scripts/methods.sh            # seeds 0 1 2
#   scripts/methods.sh 0 1 2 3 4  # more seeds
#   METHODS="kd scored_hard" scripts/methods.sh 0   # some methods only
#
# Each experiment is the whole pipeline with the method's `-S` overrides; DVC's run cache restores the
# stages whose inputs did not change (the teacher of a seed is trained once per training split), so the
# cost is about one teacher per seed and data split plus the distill (and later) stages per method.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"  # the project venv (make setup), when there is one

# method name -> its overrides (one -S value per line)
declare -A OVERRIDES=(
  [kd]=""
  [scored_hard]="distill.procedure=scored"
  [scored_soft]=$'distill.procedure=scored\ndistill.scored_targets=soft'
  [scored_pool]=$'distill.procedure=scored\ndata.unlabelled_fraction=0.5'
  [kd_pool]="data.unlabelled_fraction=0.5"
  [warm_start]="distill.warm_start={fraction: 0.2, epochs: 5}"
  [dist]="distill.losses=[{name: dist, weight: 1.0}, {name: ce, weight: 1.0}]"
  [transfer_then_distil]="transfer.order=transfer_then_distil"
  [dark_knowledge]="distill.exclude_classes=[3]"
)
ORDER="kd scored_hard scored_soft scored_pool kd_pool warm_start dist transfer_then_distil dark_knowledge"
methods=(${METHODS:-$ORDER})
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)

for method in "${methods[@]}"; do
  [ -n "${OVERRIDES[$method]+set}" ] || { echo "unknown method '$method'; known: $ORDER" >&2; exit 2; }
done
# method by method, each over every seed: rows of the report complete one after another
for method in "${methods[@]}"; do
  for seed in "${seeds[@]}"; do
    args=(-S "seed=$seed")
    while IFS= read -r value; do
      [ -z "$value" ] || args+=(-S "$value")
    done <<< "${OVERRIDES[$method]}"
    echo "queue: $method, seed $seed"
    dvc exp run --queue "${args[@]}" >/dev/null
  done
done
echo "running $(( ${#seeds[@]} * ${#methods[@]} )) experiments one at a time (dvc queue start; logs: dvc queue logs NAME)"
# one worker: the default SQLite MLflow store takes one writer at a time. `dvc exp run --run-all` was seen
# not to return after the last experiment, so the queue is started and watched instead.
dvc queue start -j 1 >/dev/null
# (the status is read whole before grep looks at it: `grep -q` stopping early would fail the pipe)
while grep -qE " (Queued|Running) *$" <<< "$(dvc queue status)"; do sleep 20; done
dvc queue stop >/dev/null 2>&1 || true
grep -E " Failed *$" <<< "$(dvc queue status)" && echo "some experiments failed: dvc queue logs NAME" >&2
distillops report --out reports/methods
