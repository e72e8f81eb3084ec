# Shared by the result folders' queue.sh: run_queue FOLDER RUNS "SETTINGS" ENTRY... trains every entry for the seeds
# in $SEEDS (default 0 1 2), seed-major (every model has seed 0 before any has seed 2), with `ctrscale compare` in RUNS, and copies
# each finished run's results.json, config.yaml and metrics.csv to FOLDER/LABEL-sS. Rerun it to resume: a copied
# run is skipped, `compare` reuses finished runs, resumes interrupted ones and refuses a run whose config differs.
run_queue() {
  local here=$1 runs=$2 settings=$3 seed entry label
  shift 3
  for seed in ${SEEDS:-0 1 2}; do
    for entry in "$@"; do
      label=${entry%%:*}
      [ -f "$here/$label-s$seed/results.json" ] && continue
      # shellcheck disable=SC2086  # settings are separate words
      ctrscale compare --data ml1m-u2999-ctr-v1 --out "$runs" $settings --seeds "$seed" --models "$entry" \
        || { echo "FAILED $label s$seed"; continue; }
      mkdir -p "$here/$label-s$seed"
      cp "$runs/$label-s$seed"/{results.json,config.yaml,metrics.csv} "$here/$label-s$seed/"
    done
  done
}
