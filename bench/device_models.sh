#!/usr/bin/env bash
# One GPU call that trains every model the CPU benchmarks and the full exactness check use, and
# packs them into $OUT in parts of at most 15 MB (the device returns files of 16 MB at most):
#   deep/   a 'deep' fp32 Beauty target, a plain-CE draft and one aligned draft per objective (gpu_drafts.sh)
#   small/  a 'small' fp32 Beauty target and a plain-CE draft (cheaper: the full exactness check)
#
#   bash bench/device_models.sh .data/beauty $OUT
# Every model trains for a seeded number of steps (DEEP_TARGET_STEPS, DRAFT_STEPS, SMALL_TARGET_STEPS; 0: all
# 10 epochs), never a time cap; SMALL=0 skips the small/ models.
# Unpack here:  cat $FILES/models.tgz.part-* | tar xzf - -C .data/device-models
set -euo pipefail
DATA=${1:-.data/beauty}
OUT=${2:-$OUT}
M=/tmp/rs-models
export PYTHONPATH=src
CLI="python3 -m recspec.cli"
rm -rf "$M"; mkdir -p "$M"
t0=$(date +%s)
bash bench/gpu_drafts.sh "$DATA" "$M/deep" "${DEEP_TARGET_STEPS:-6000}" "${DRAFT_STEPS:-3000}" deep 2>&1 | grep -v "it/s\]\|step/s\]" || true
echo "deep models: $(( $(date +%s) - t0 )) s"
if [ "${SMALL:-1}" = 0 ]; then tar czf - -C "$M" . | split -b 15M - "$OUT/models.tgz.part-"; ls -la "$OUT"; exit 0; fi
R=/tmp/rs-small
rm -rf "$R"
$CLI train "$DATA" --out "$R/target" --size small --epochs 10 --lr 2e-3 --eval-users 500 \
    --max-steps "${SMALL_TARGET_STEPS:-4000}" --device cuda 2>&1 | grep -v "step/s\]" || true
$CLI train "$DATA" --out "$R/draft" --size draft --role draft --epochs 10 --lr 3e-3 --eval-users 500 \
    --max-steps "${DRAFT_STEPS:-3000}" --device cuda 2>&1 | grep -v "step/s\]" || true
mkdir -p "$M/small"
cp -r "$R/target/best" "$M/small/target"
cp -r "$R/draft/best" "$M/small/ce-plain"
echo "small models: $(( $(date +%s) - t0 )) s"
tar czf - -C "$M" . | split -b 15M - "$OUT/models.tgz.part-"
ls -la "$OUT"
