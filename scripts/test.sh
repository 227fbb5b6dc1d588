#!/usr/bin/env bash
# Install, then run the whole test suite (reads ../shared/datasets where present).
# Two pytest workers, one file each at a time (module fixtures are built once), one torch thread per worker:
# the heavy files (exactness over 200 users) run side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OMP_NUM_THREADS=1 python3 -m pytest tests -p no:cacheprovider --durations=5 -n 2 --dist loadfile
