#!/bin/bash
# Does abml's training need its inner loop? Two abml runs of MINUTES (default 12) each, side by side, under
# the deep-ensemble comparison's protocol (benchmarks/ensemble_members.sh: 60-way 1-shot episodes, 5 queries
# per class, Adam 1e-3 with a cosine decay over DECAY episodes): seed 0 with --inner-steps 0, and seed 1 with
# the default 5 steps (a second seed beside ensemble_members.sh's abml-seed0, for the seed-to-seed spread).
#
#   bash benchmarks/inner_loop_ablation.sh [DATA_DIR] [MINUTES] [DECAY] [OUT]
#
# Run from the repository root. Then:
#   python benchmarks/uncertainty.py ... --run abml-12min-inner0=OUT/abml-inner0-seed0 --run abml-12min-seed1=OUT/abml-seed1
source "$(dirname "$0")/members_common.sh"
ABML=(--method abml "${COMMON[@]}" --learning-rate 1e-3 --residual-head --jit off)
python -m training.fit "${ABML[@]}" --inner-steps 0 --seed 0 --output "$OUT/abml-inner0-seed0" \
    > "$OUT/abml-inner0-seed0.log" 2>&1 &
python -m training.fit "${ABML[@]}" --seed 1 --output "$OUT/abml-seed1" > "$OUT/abml-seed1.log" 2>&1 &
wait
echo "trained $OUT/abml-inner0-seed0 and $OUT/abml-seed1"
