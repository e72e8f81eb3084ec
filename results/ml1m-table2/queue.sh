#!/usr/bin/env bash
# The SparseCTR paper's Table 2 on ml1m-u2999-ctr-v1 (issue 28): one resumable queue, seed-major so every model
# has seed 0 before any has seed 2. Runs train in $RUNS (checkpoints, predictions); each finished run's
# results.json, config.yaml and metrics.csv are copied here. Rerun it to resume: `ctrscale compare` reuses
# finished runs, resumes interrupted ones from their checkpoint and refuses a run whose config differs.
# DIN, SUAN and SparseCTR S2 come from ../ml1m-sparsectr (same protocol).
#   RUNS=/work/runs/ml1m-t2 bash results/ml1m-table2/queue.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-$HOME/ctrscale-runs/ml1m-table2}
ENTRIES=(
  "can"
  "softsim:model.name=sim;model.search=soft"
  "hardsim:model.name=sim;model.search=hard"
  "eta"
  "twinv2"
  "bst"
  "hstu:model.name=hstu;data.listwise=true"
  "longer:model.name=longer;data.listwise=true"
)
[ $# -gt 0 ] && ENTRIES=("$@")
for seed in 0 1 2; do
  for entry in "${ENTRIES[@]}"; do
    label=${entry%%:*}
    [ -f "$here/$label-s$seed/results.json" ] && continue
    ctrscale compare --data ml1m-u2999-ctr-v1 --out "$RUNS" data.max_len=512 data.length_window=16 \
      train.epochs=1 train.checkpoint_every=50 --seeds "$seed" --models "$entry" || { echo "FAILED $label s$seed"; continue; }
    mkdir -p "$here/$label-s$seed"
    cp "$RUNS/$label-s$seed"/{results.json,config.yaml,metrics.csv} "$here/$label-s$seed/"
  done
done
