#!/usr/bin/env bash
# The arts -> office learning curve: tune each missing point (finetune/fewshot-office-evidence.yaml
# with --train-users N, from the arts adapter and from the base model), then evaluate them all
# (eval/arts-office-curve.yaml) and draw the curve. Resumable: a point whose adapter exists is
# not retrained, an interrupted one resumes from its last checkpoint; LLM scores are cached.
set -euo pipefail
DATA=${DATA:-../shared/data/amazon-arts-office}
OUT=${OUT:-eval/reports/arts-office-curve}
tune() {  # tune START N [STEPS]: START = arts | base; STEPS = the config's 16 unless given
  local start=$1 n=$2 steps=${3:-} dir users
  if [ "$start" = arts ]; then dir=runs/office-evidence-$n; else dir=runs/office-evidence-base-$n; fi
  local budget=()
  if [ -n "$steps" ]; then  # a larger budget: validation every 16 steps instead of 8
    dir=$dir-${steps}steps
    budget=(--max-steps "$steps" --eval-steps 16 --save-steps 16)
  fi
  users=$n
  [ "$n" = all ] && users=1000000  # more than there are: every warm office user
  [ -f "$dir/adapter/adapter_config.json" ] && return 0
  local from=()
  [ "$start" = arts ] && from=(--adapter finetune/adapters/evidence-arts/adapter)
  local resume=()
  [ -d "$dir/checkpoints" ] && resume=(--resume)
  llmrec finetune --config finetune/fewshot-office-evidence.yaml --dataset "$DATA" \
    --train-users "$users" "${from[@]}" "${resume[@]}" "${budget[@]}" --output-dir "$dir"
}
for point in "arts 16" "base 16" "arts 64" "arts 256" "base 64" "base 256" "arts all" "base 256 64"; do
  tune $point
done
llmrec evaluate eval/arts-office-curve.yaml --out "$OUT"
python eval/plot_curve.py "$OUT/report.json" --out "$OUT/curve.png"
