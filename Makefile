# Two commands on a fresh clone: `make run` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp

.PHONY: install run test lint check-requirements format docs docs-build bench clean

install: $(STAMP)

# Rebuilt only when a requirements file changes, so `make test` stays quick on a warm checkout.
$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py vector_index_ensure
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	exec $(BIN)/python manage.py serve

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The pinned requirements resolve to wheels for Python 3.12-3.14 on PyPI (skips when offline,
# fails when offline in CI).
check-requirements: install
	$(BIN)/python .ci/requirements_resolve.py

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The documentation site (mkdocs.yml, docs/): served with live reload beside `make run`'s port, or
# built into site/ with --strict, so a broken link or anchor fails (CI runs docs-build).
DOCS_ADDR ?= 127.0.0.1:8001

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(DOCS_ADDR)

docs-build: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The benchmarks' extra packages (matplotlib, the LangGraph peer) stay out of `make test` and `make run`.
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@for script in bench/workspace.py bench/search.py bench/conversations.py bench/lookups.py bench/deltas.py bench/turns.py bench/streams.py bench/retention.py bench/dashboard.py bench/pgbouncer.py bench/automation.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
