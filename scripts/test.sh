#!/usr/bin/env bash
# Set up, then run the whole test suite (real-model tests marked slow are included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --browser
exec .venv/bin/python -m pytest "$@"
