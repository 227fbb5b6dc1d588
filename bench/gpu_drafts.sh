#!/usr/bin/env bash
# One GPU call: an fp32 Beauty target (preset SIZE, default 'small'), a plain-CE draft, the target's teacher data, and one aligned
# draft per objective, all trained on the GPU with the CLI; checkpoints land in $OUT for CPU benchmarks.
#
#   bash bench/gpu_drafts.sh .data/beauty $OUT [target steps] [steps per draft] [SIZE]   (seeded step counts, no clock)
set -euo pipefail
DATA=${1:-.data/beauty}
OUT=${2:-${OUT:-runs/gpu-drafts}}
TT=${3:-6000}
DT=${4:-3000}
SIZE=${5:-small}
R=/tmp/rs-drafts
export PYTHONPATH=src
CLI="python3 -m recspec.cli"
rm -rf "$R"; mkdir -p "$R" "$OUT"
python3 -c "import torch; torch.backends.cuda.matmul.allow_tf32 = False; print(torch.cuda.get_device_name())"
t0=$(date +%s)
$CLI train "$DATA" --out "$R/target" --size "$SIZE" --epochs 10 --lr 2e-3 --eval-users 500 --max-steps "$TT" --device cuda
$CLI train "$DATA" --out "$R/ce-plain" --size draft --role draft --epochs 10 --lr 3e-3 --eval-users 500 \
    --max-steps "$DT" --device cuda
echo "trained target + plain draft: $(( $(date +%s) - t0 )) s"
$CLI distill teacher "$DATA" --target "$R/target/best" --out "$R/teacher" --K-prime 20 --batch-size 512 --max-examples 50000 --device cuda
echo "teacher: $(( $(date +%s) - t0 )) s"
for obj in ce wordkd tvd seqkd atspeed-s atspeed-r; do
    $CLI distill train "$DATA" --target "$R/target/best" --teacher "$R/teacher" --objective "$obj" \
        --out "$R/distill/$obj" --size draft --epochs 10 --lr 3e-3 --batch-size 256 --warmup-steps 50 \
        --eval-users 200 --eval-every 150 --max-steps "$DT" --device cuda
    echo "$obj: $(( $(date +%s) - t0 )) s"
done
cp -r "$R/target/best" "$OUT/target"
cp -r "$R/ce-plain/best" "$OUT/ce-plain"
for obj in ce wordkd tvd seqkd atspeed-s atspeed-r; do
    cp -r "$R/distill/$obj/best" "$OUT/$obj"
    cp "$R/distill/$obj"/*.jsonl "$OUT/$obj/" 2>/dev/null || true
done
ls -R "$OUT" | head -60
echo "total: $(( $(date +%s) - t0 )) s"
