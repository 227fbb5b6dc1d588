#!/usr/bin/env bash
# Install, then run the main job: SIDs + a small target on MovieLens-100K, evaluated vs popularity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
recspec demo "$@"
