# Sourced by the repro scripts: `repro_sweep NAME DEPTH EPOCHS BATCHES [KEY=VALUE ...]` runs the Tune sweep
# repro/NAME.yaml into the MLflow experiment $EXP, with the knobs every script documents as environment variables:
# DEPTH, EPOCHS, BATCHES (limit_train_batches; 0 = whole epochs) default to the script's values; SEEDS (3),
# EXTRA_SET (more key=value) and SWEEP_ARGS (more sweep flags, e.g. --gpus-per-trial 1) are passed through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

repro_sweep() {
  local name=$1 depth=$2 epochs=$3 batches=$4
  shift 4
  # shellcheck disable=SC2086  # EXTRA_SET / SWEEP_ARGS are word lists on purpose
  python -m orchestrator.sweep "repro/$name.yaml" --experiment "$EXP" --seeds "${SEEDS:-3}" ${SWEEP_ARGS:-} \
    --set depth="${DEPTH:-$depth}" epochs="${EPOCHS:-$epochs}" limit_train_batches="${BATCHES:-$batches}" "$@" \
    ${EXTRA_SET:-}
}

# `repro_space NAME [KEY=VALUE ...]` runs search_spaces/NAME.yaml (a method's own space, budgets in the file) into
# $EXP; EPOCHS and BATCHES override the file's budget only when set (not every trainable has a depth).
repro_space() {
  local name=$1
  shift
  local set=("$@")
  [[ -n ${EPOCHS:-} ]] && set+=("epochs=$EPOCHS")
  [[ -n ${BATCHES:-} ]] && set+=("limit_train_batches=$BATCHES")
  # shellcheck disable=SC2206  # EXTRA_SET is a word list on purpose
  set+=(${EXTRA_SET:-})
  # shellcheck disable=SC2086
  python -m orchestrator.sweep "search_spaces/$name.yaml" --experiment "$EXP" --seeds "${SEEDS:-3}" ${SWEEP_ARGS:-} \
    ${set[@]:+--set "${set[@]}"}
}
