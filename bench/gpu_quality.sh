#!/usr/bin/env bash
# Both catalogues in one GPU command (a machine keeps nothing between commands): Beauty (period split), then
# Office (leave-one-out). Beauty's SASRec grid is the two widths at the dropout and rate that won the full
# 8-point grid (64,128 x 0.2,0.5 x 1e-3,3e-3) on Beauty's valid users in an earlier run of gpu_quality.py,
# and its target config the one that won that run's validation (base:0.3:2e-3 over base:0.2:1e-3).
set -euo pipefail
OUT=${1:-runs/gpu_quality}
export PYTHONPATH=src
python3 bench/gpu_quality.py --data .data/beauty --out "$OUT" --configs base:0.3:2e-3 --epochs 30 --eval-epochs 3 \
    --patience 3 --exclude-history --sasrec-hidden 64,128 --sasrec-dropout 0.5 --sasrec-lr 3e-3
python3 bench/gpu_quality.py --data .data/office --out "$OUT" --configs base:0.2:1e-3 --epochs 30 \
    --eval-epochs 3 --patience 3 --batch 128 --exclude-history --sasrec-steps 1500 --sasrec-lr 1e-3
