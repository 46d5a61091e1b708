# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
STAMP := .venv/.saedex-installed

.PHONY: setup demo test test-fast lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/install_corpus_sources.sh
	bash scripts/setup.sh
	touch $@

# Index the default model + shipped SAE on the default corpus, export the site, serve both.
demo: setup
	$(PY) -m saedex.cli demo

# The whole suite, the integration tests on the real default model included (what CI runs).
test: setup
	$(PY) -m pytest -m "integration or not integration" --durations=25

# The fast tests only (tiny random model).
test-fast: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) bench/index_bench.py
