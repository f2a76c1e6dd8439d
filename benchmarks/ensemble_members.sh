#!/bin/bash
# The deep-ensemble comparison of the uncertainty benchmark (issue 19): five ProtoNets (seeds 0-4) and one
# abml, each trained for MINUTES (default 12) of wall-clock under the residual80 protocol (60-way 1-shot
# episodes, 5 queries per class, Adam 1e-3 with a cosine decay over DECAY episodes), one after another.
#
#   bash benchmarks/ensemble_members.sh [DATA_DIR] [MINUTES] [DECAY] [OUT]
#
# Run from the repository root. A finished member (model.weights.h5) is not trained again. Then:
#   python benchmarks/uncertainty.py ... --ensemble protonet-5x12min=OUT/protonet-seed0,...,OUT/protonet-seed4
source "$(dirname "$0")/members_common.sh"
for seed in 0 1 2 3 4; do
  out=$OUT/protonet-seed$seed
  [ -f "$out/model.weights.h5" ] || python -m training.fit --method protonet "${COMMON[@]}" --seed "$seed" \
      --output "$out" > "$OUT/protonet-seed$seed.log" 2>&1
done
out=$OUT/abml-seed0
[ -f "$out/model.weights.h5" ] || python -m training.fit --method abml "${COMMON[@]}" --learning-rate 1e-3 \
    --residual-head --seed 0 --output "$out" > "$OUT/abml-seed0.log" 2>&1
echo "trained $OUT"
