#!/usr/bin/env bash
# Install, then run the whole test suite (reads ../shared/datasets where present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m pytest tests -p no:cacheprovider --durations=5
