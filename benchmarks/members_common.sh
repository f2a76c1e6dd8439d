# Sourced by ensemble_members.sh and inner_loop_ablation.sh: their arguments [DATA_DIR] [MINUTES] [DECAY] [OUT]
# and the training flags every member shares (the residual80 protocol: 60-way 1-shot episodes, 5 queries per
# class, a cosine decay over DECAY episodes, MINUTES of wall-clock).
set -euo pipefail
DATA_DIR=${1:-../shared/data}
MINUTES=${2:-12}
DECAY=${3:-1500}
OUT=${4:-runs/ensemble12}
mkdir -p "$OUT"
COMMON=(--ways 60 --queries 5 --meta-batch 1 --epochs 1000 --steps-per-epoch 100 --val-tasks 50 --shots 1
        --lr-schedule cosine --lr-decay-episodes "$DECAY" --max-minutes "$MINUTES" --data-dir "$DATA_DIR" --verbose 2)
