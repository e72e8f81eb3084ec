#!/usr/bin/env bash
# EST's comparison (issue 5 protocol, ../README.md) extended with MTGR and LONGER (issue 28). Resumable
# (../queue_lib.sh); pass entries to run only those.
#   RUNS=/tmp/ml1m-est bash results/ml1m-est/queue.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../queue_lib.sh"
ENTRIES=(
  "mtgr:model.name=mtgr;model.cand_seq_len=20"
  "longer"
)
[ $# -gt 0 ] && ENTRIES=("$@")
run_queue "$here" "${RUNS:-$HOME/ctrscale-runs/ml1m-est}" \
  "train.epochs=4 train.patience=2 train.early_stop_metric=gauc" "${ENTRIES[@]}"
