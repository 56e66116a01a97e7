#!/usr/bin/env bash
# Set up ftzoo in .venv and run the quickstart: S²FT on SmolLM2-135M-Instruct, generated arithmetic, CPU.
set -euo pipefail
cd "$(dirname "$0")"
bash tools/install.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m tools.quickstart "$@"
