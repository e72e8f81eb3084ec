#!/usr/bin/env bash
# The SparseCTR paper's Table 2 on ml1m-u2999-ctr-v1 (issue 28), the ml1m-sparsectr protocol; DIN, SUAN and
# SparseCTR S2 come from ../ml1m-sparsectr. Resumable (../queue_lib.sh); pass entries to run only those.
#   RUNS=/tmp/ml1m-t2 bash results/ml1m-table2/queue.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../queue_lib.sh"
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
run_queue "$here" "${RUNS:-$HOME/ctrscale-runs/ml1m-table2}" \
  "data.max_len=512 data.length_window=16 train.epochs=1 train.checkpoint_every=50" "${ENTRIES[@]}"
