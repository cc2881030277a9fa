#!/usr/bin/env bash
# Train the shipped CIFAR-10 GHN-2 on one GPU for a fixed wall-clock budget, with a schedule that fits it.
#
# Made for a short lease of a GPU machine that cannot download anything: the CIFAR-10 training
# images travel as one tar.gz of the ImageFolder tree, are unpacked to a scratch folder, and the
# run goes through the same benchmarks/train_ghn.py as on CPU (--device cuda). A short probe run
# measures s/step first; the real run then plans a cosine schedule over as many steps as the
# remaining budget buys, so the learning rate reaches zero before the budget ends.
# Everything the run produces (log.csv, train_config.json, final/ghn.safetensors, the probe's log
# and the checkpoint, split into 15 MB parts) is copied to $OUT.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benchmarks/gpu_train_ghn.sh [-h] TAR_GZ INIT SEED BUDGET_SECONDS

  TAR_GZ          tar.gz holding cifar10-jpeg/train/<class>/*.jpg, e.g. made here with
                  tar czf .device/cifar10-train.tar.gz -C ../shared/data cifar10-jpeg/train
  INIT            GHN weights to start from (e.g. ghninit/zoo/weights/cifar10-mini.safetensors)
  SEED            training seed (architectures, images, dropout)
  BUDGET_SECONDS  wall seconds for the whole script; the run stops 30 s before it

Environment: OUT (where results go; default ./gpu_out), PREFETCH (prefetch workers; default 12),
PYTHON (default python3), PROBE_STEPS (default 40), DEVICE (default cuda; cpu for a dry run).
EOF
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -ne 4 ]]; then usage >&2; exit 2; fi

TAR_GZ=$1 INIT=$2 SEED=$3 BUDGET=$4
START=$(date +%s)
OUT=${OUT:-./gpu_out}
PYTHON=${PYTHON:-python3}
PREFETCH=${PREFETCH:-12}
PROBE_STEPS=${PROBE_STEPS:-40}
SCRATCH=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PYTHON -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
tar xzf "$TAR_GZ" -C "$SCRATCH"
DATA=$SCRATCH/cifar10-jpeg
echo "unpacked $(find "$DATA/train" -name '*.jpg' | wc -l) images in $(( $(date +%s) - START )) s"

common=(--data-dir "$DATA" --init "$INIT" --seed "$SEED" --device "${DEVICE:-cuda}" --prefetch-workers "$PREFETCH" --quiet)

# 1. Probe: s/step on this machine, measured between step 15 and the last probe step.
$PYTHON benchmarks/train_ghn.py "${common[@]}" --save-dir "$SCRATCH/probe" --epochs 1 --max-steps "$PROBE_STEPS"
cp "$SCRATCH/probe/log.csv" "$OUT/probe_log.csv"
read -r STEPS EPOCHS MINUTES < <($PYTHON - "$SCRATCH/probe/log.csv" "$START" "$BUDGET" <<'EOF'
import csv, sys, time
rows = list(csv.DictReader(open(sys.argv[1])))
a, b = rows[15], rows[-1]
s_per_step = (float(b["wall_s"]) - float(a["wall_s"])) / (int(b["step"]) - int(a["step"]))
left = int(sys.argv[2]) + int(sys.argv[3]) - time.time() - 30  # the run's own stop, 30 s before the end
steps = int(0.85 * (left - 40) / s_per_step)  # 40 s for start-up and saving; 15% margin
print(steps, f"{steps / 781:.4f}", f"{left / 60:.2f}")
print(f"probe: {s_per_step:.3f} s/step; planning {steps} steps, stop after {left / 60:.2f} min", file=sys.stderr)
EOF
)

# 2. The run: cosine over the planned steps (781 steps per epoch at batch 64).
$PYTHON benchmarks/train_ghn.py "${common[@]}" --save-dir "$SCRATCH/run" --epochs "$EPOCHS" \
    --schedule cosine --warmup-steps 50 --lr 1e-3 --max-minutes "$MINUTES" --checkpoint-minutes 2 || true

cp "$SCRATCH/run/log.csv" "$SCRATCH/run/train_config.json" "$SCRATCH/run/final/ghn.safetensors" "$OUT/"
split -b 15M "$SCRATCH/run/checkpoint.pt" "$OUT/checkpoint.pt.part-"
sha256sum "$SCRATCH/run/checkpoint.pt" "$OUT/ghn.safetensors"
echo "done in $(( $(date +%s) - START )) s"
