#!/usr/bin/env bash
# The item-token LM as ml-latest-small's LLM stage, end to end: train one item-token LM per
# seed (finetune/item-tokens-ml-latest-small.yaml; an interrupted run resumes from its last
# epoch, a finished one is only re-evaluated), then the listwise combiner over fused-seq's
# generators, transitions, the sentence encoder and the seeds' mean snapshot-ensemble scores,
# tested against fused-seq on all 610 users. About 70 min per seed on a 2-core CPU; the
# combiner takes seconds once `llmrec evaluate eval/ml-latest-small-seeds.yaml` has filled the
# evaluation cache (without it, it computes the suite's lists and LLM scores first).
#   bash eval/run_item_tokens.sh                 # seeds 0 and 1
#   SEEDS="0 1 2" bash eval/run_item_tokens.sh   # a third member
set -euo pipefail
SEEDS=${SEEDS:-0 1}
PYTHON=${PYTHON:-python}
RECIPE=finetune/item-tokens-ml-latest-small.yaml
OUT=${OUT:-eval/reports/combiner-item-tokens-seeds-ml-latest-small.json}
scores=()
for seed in $SEEDS; do
  tag=""
  [ "$seed" != 0 ] && tag="-seed$seed"
  run=runs/item-tokens$tag-ml-latest-small
  args=(--config "$RECIPE" --seed "$seed" --run-dir "$run" --out "eval/reports/item-tokens$tag-ml-latest-small.json")
  if [ -f "$run/training.json" ]; then
    "$PYTHON" eval/exp_item_tokens.py "${args[@]}" --skip-training
  else
    "$PYTHON" eval/exp_item_tokens.py "${args[@]}" --resume
  fi
  scores+=("$run/catalog-scores-snapshots.npz")
done
"$PYTHON" eval/exp_combiner.py eval/ml-latest-small-seeds.yaml --item-encoders all-minilm-l6-v2 \
  --item-token-scores "${scores[@]}" --out "$OUT"
