#!/usr/bin/env bash
# Sweep stage-2 losses x samplers (SEED.md "批量实验（Sweep）"), one run after another.
#
#   ./run_sweep.sh                                   # 3 losses x 3 samplers with config.yaml's settings
#   ./run_sweep.sh training.epochs=5 stage2.epochs=5 # extra arguments go to every `python main.py`
#   LOSSES="CrossEntropy FocalLoss" SAMPLERS="none progressive_power" SEEDS="0 1 2" ./run_sweep.sh
#
# Environment: LOSSES, SAMPLERS (space-separated lists), SEEDS (empty: config's seed),
# PREFIX (exp_name prefix, default sweep), LOG_DIR (default logs), PYTHON (default python),
# DRY_RUN=1 (print the commands only), SUMMARIZE=1 (run summarize.py on the sweep at the end).
# Each run logs to $LOG_DIR/<exp_name>[_seed<k>].log and writes its own experiments/ folder.
# A failed run is reported and the sweep goes on; the exit status is 1 if any run failed.
# Compare the runs with: python summarize.py --pattern '<PREFIX>_*'
set -euo pipefail

read -r -a LOSSES <<< "${LOSSES:-CrossEntropy FocalLoss CostSensitiveCE}"
read -r -a SAMPLERS <<< "${SAMPLERS:-none inv_freq progressive_power}"
read -r -a SEEDS <<< "${SEEDS:-}"
PREFIX="${PREFIX:-sweep}"
LOG_DIR="${LOG_DIR:-logs}"
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "${#SEEDS[@]}" -eq 0 ]; then SEEDS=(""); fi
if [ "$DRY_RUN" != "1" ]; then mkdir -p "$LOG_DIR"; fi
failed=()
total=0

for loss in "${LOSSES[@]}"; do
  for sampler in "${SAMPLERS[@]}"; do
    for seed in "${SEEDS[@]}"; do
      exp_name="${PREFIX}_${loss}_${sampler}"
      cmd=("$PYTHON" "$HERE/main.py" "exp_name=$exp_name" stage2.enabled=true
           "stage2.loss=$loss" "stage2.sampler=$sampler")
      log="$LOG_DIR/${exp_name}.log"
      if [ -n "$seed" ]; then
        cmd+=("seed=$seed")
        log="$LOG_DIR/${exp_name}_seed${seed}.log"
      fi
      cmd+=("$@")
      total=$((total + 1))
      if [ "$DRY_RUN" = "1" ]; then
        printf '%q ' "${cmd[@]}"; printf '> %q 2>&1\n' "$log"
        continue
      fi
      echo "Running: $exp_name${seed:+ (seed $seed)}"
      if "${cmd[@]}" > "$log" 2>&1; then
        echo "Finished: $exp_name${seed:+ (seed $seed)}"
      else
        rc=$?
        echo "FAILED (exit $rc): $exp_name${seed:+ (seed $seed)}; last lines of $log:" >&2
        tail -n 3 "$log" >&2 || true
        failed+=("$exp_name${seed:+ seed=$seed}")
      fi
      echo "---"
    done
  done
done

if [ "$DRY_RUN" = "1" ]; then exit 0; fi
echo "All experiments completed: $((total - ${#failed[@]})) of $total succeeded."
if [ "${SUMMARIZE:-0}" = "1" ]; then
  "$PYTHON" "$HERE/summarize.py" --pattern "${PREFIX}_*" || true
else
  echo "Compare them with: python summarize.py --pattern '${PREFIX}_*'"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'Failed runs: %s\n' "${failed[*]}" >&2
  exit 1
fi
