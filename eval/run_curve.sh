#!/usr/bin/env bash
# A new-domain learning curve: tune each missing point (the direction's few-shot recipe with
# --train-users N, from the source-tuned adapter and from the base model), then evaluate them
# all (the direction's curve suite) and draw the curve. Resumable: a point whose adapter exists
# is not retrained, an interrupted one resumes from its last checkpoint; LLM scores are cached.
#   bash eval/run_curve.sh               # arts -> office (eval/arts-office-curve.yaml)
#   bash eval/run_curve.sh office-arts   # office -> arts (eval/office-arts-curve.yaml)
#   TRAIN_ONLY=1 bash eval/run_curve.sh office-arts   # tune the missing points, evaluate later
set -euo pipefail
DIRECTION=${1:-arts-office}
DATA=${DATA:-../shared/data/amazon-arts-office}
case "$DIRECTION" in
  arts-office)
    SOURCE=arts; TARGET=office
    POINTS=("arts 16" "base 16" "arts 64" "arts 256" "base 64" "base 256" "arts all" "base 256 64")
    ;;
  office-arts)
    SOURCE=office; TARGET=arts
    POINTS=("office 16" "base 16" "office 64" "office 256" "base 64" "base 256" "office all")
    ;;
  *)
    echo "run_curve.sh: unknown direction '$DIRECTION' (arts-office or office-arts)" >&2
    exit 2
    ;;
esac
CONFIG=finetune/fewshot-$TARGET-evidence.yaml
SOURCE_ADAPTER=finetune/adapters/evidence-$SOURCE/adapter
SUITE=eval/$DIRECTION-curve.yaml
OUT=${OUT:-eval/reports/$DIRECTION-curve}
if [ ! -f "$SOURCE_ADAPTER/adapter_config.json" ]; then
  echo "run_curve.sh: no source adapter at $SOURCE_ADAPTER (train finetune/evidence-$SOURCE.yaml)" >&2
  exit 2
fi
tune() {  # tune START N [STEPS]: START = the source domain | base; STEPS = the config's 16 unless given
  local start=$1 n=$2 steps=${3:-} dir users
  if [ "$start" = base ]; then dir=runs/$TARGET-evidence-base-$n; else dir=runs/$TARGET-evidence-$n; fi
  local budget=()
  if [ -n "$steps" ]; then  # a larger budget: validation every 16 steps instead of 8
    dir=$dir-${steps}steps
    budget=(--max-steps "$steps" --eval-steps 16 --save-steps 16)
  fi
  users=$n
  [ "$n" = all ] && users=1000000  # more than there are: every warm target-domain user
  [ -f "$dir/adapter/adapter_config.json" ] && return 0
  local from=()
  [ "$start" != base ] && from=(--adapter "$SOURCE_ADAPTER")
  local resume=()
  [ -d "$dir/checkpoints" ] && resume=(--resume)
  llmrec finetune --config "$CONFIG" --dataset "$DATA" \
    --train-users "$users" "${from[@]}" "${resume[@]}" "${budget[@]}" --output-dir "$dir"
}
for point in "${POINTS[@]}"; do
  tune $point
done
[ -n "${TRAIN_ONLY:-}" ] && exit 0
llmrec evaluate "$SUITE" --out "$OUT"
python eval/plot_curve.py "$OUT/report.json" --out "$OUT/curve.png"
