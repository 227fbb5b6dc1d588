#!/usr/bin/env bash
# The full exactness check (scripts/check_exactness.py) split over CPU cores: one process per
# (batch size, K, half of the test users), one thread each; all logs concatenated into one file.
#
#   bash scripts/check_exactness_sharded.sh TARGET DRAFT DATA LOG [users per shard]
set -uo pipefail
TARGET=$1; DRAFT=$2; DATA=$3; LOG=$4; HALF=${5:-1777}
TMP=$(mktemp -d)  # SHARD_TIMEOUT (seconds, 0: none) stops a shard that runs too long
for b in 1 32; do for K in 1 5 10 20; do for skip in 0 $HALF; do
    PYTHONPATH=src timeout "${SHARD_TIMEOUT:-0}" python3 scripts/check_exactness.py --target "$TARGET" --draft "$DRAFT" random --data "$DATA" \
        --batch $b --K $K --skip $skip --users $HALF --threads 1 > "$TMP/b${b}_K${K}_s${skip}.log" 2>&1 &
done; done; done
wait
rc=0
for f in "$TMP"/*.log; do echo "== $(basename "$f")"; cat "$f"; grep -q "^OK" "$f" || rc=1; done > "$LOG"
grep -h "users differ" "$TMP"/*.log
echo "shards OK: $(grep -l '^OK' "$TMP"/*.log | wc -l) of $(ls "$TMP"/*.log | wc -l)"
exit $rc
