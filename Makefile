# Two commands matter: `make demo` and `make test`. Each sets up its own virtualenv
# from the pinned requirements, so a fresh clone with Python 3.11 and make is enough.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint typecheck unit bench-smoke docs dist lock clean

$(STAMP): requirements/dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# ruff (complexity rules included) and the architecture contracts (import-linter: layers,
# a core free of optional dependencies, serde apart; see pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict tests/typing
	$(BIN)/mypy --strict tools

unit: $(STAMP)
	$(BIN)/python -m pytest -q

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# The documentation site (mkdocs.yml) into site/; strict: any warning, a broken link or
# anchor or a docstring griffe cannot parse, fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The sdist and wheel into dist/, then checked like a release (tools/check_dist.py: twine,
# check-wheel-contents, the typed marker, one version, a clean-venv install running an example).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --quiet --no-isolation --outdir dist .
	$(BIN)/python tools/check_dist.py dist

# lint, type-check, the whole suite on asyncio and trio, the benchmark smoke run, the docs site
# and the release artefacts
test: lint typecheck unit bench-smoke docs dist

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks --full

lock:
	$(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet -r requirements/dev.in
	{ echo "# Pinned by 'make lock' from requirements/dev.in on CPython 3.11. Do not edit by hand."; \
	  .lockvenv/bin/python -m pip freeze | grep -v -E '^(-e|pip==)'; } > requirements/dev.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build dist site
