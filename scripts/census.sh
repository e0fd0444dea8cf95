#!/usr/bin/env bash
# Main job: set up, then run the head census on the embedded default model (reports/smollm2-135m/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/workbench census --model smollm2-135m "$@"
