#!/usr/bin/env bash
# Issue 29: ctrscale against FuxiCTR's best figure on ml1m-u2999-ctr-v1, on FuxiCTR's features and settings
# (--config fuxictr-features, every embedding 16 wide), 3 seeds; then each model once on ctrscale's full feature
# set and with one feature group dropped (the history rating; the hour and weekday). Resumable (../queue_lib.sh).
#   RUNS=/tmp/ml1m-peer bash results/ml1m-peer/queue.sh [LABEL...]   (labels: only those of MODELS below, e.g. two
#   queues side by side on disjoint models)
set -u
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../queue_lib.sh"
runs=${RUNS:-$HOME/ctrscale-runs/ml1m-peer}
TOWER="model.hidden=[256,128,64]"
MODELS=(
  "mlp:$TOWER"
  "din:$TOWER;model.attention_hidden=[64];model.activation=dice;model.attention_activation=dice"
  "suan"
  "lightsuan-distilled:model.name=lightsuan;distill.teacher={name: suan, size: size-3}"
  "sparsectr"
  "est"
  "fat"
)
if [ $# -gt 0 ]; then
  chosen=()
  for m in "${MODELS[@]}"; do [[ " $* " == *" ${m%%:*} "* ]] && chosen+=("$m"); done
  MODELS=("${chosen[@]}")
fi
run_queue "$here" "$runs" "--config fuxictr-features --embed-dim 16" "${MODELS[@]}"
# the feature groups, one seed: all fields (every model); all but the history rating, all but hour and weekday
# (every model but the two costliest, EST and the distilled LightSUAN: 5 of their runs would take ~5 CPU-hours)
GROUP_MODELS=" mlp din suan sparsectr fat "
for variant in "full:data.drop_fields=[]" "norating:data.drop_fields=[hist.rating]" \
               "notime:data.drop_fields=[hour,weekday]"; do
  suffix=${variant%%:*} drop=${variant#*:}
  entries=()
  for m in "${MODELS[@]}"; do
    label=${m%%:*} rest=${m#*:}
    [[ $suffix == full || $GROUP_MODELS == *" $label "* ]] || continue
    [ "$rest" = "$m" ] && rest=""
    [[ $rest == *model.name=* ]] || rest="model.name=${label%%-*}${rest:+;$rest}"
    entries+=("$label-$suffix:$drop;$rest")
  done
  SEEDS=0 run_queue "$here" "$runs" "--config fuxictr-features --embed-dim 16" "${entries[@]}"
done
