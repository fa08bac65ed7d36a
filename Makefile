# The two commands: `make demo` and `make test`. Both create and reuse .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test test-hub lint bench clean sandbox

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: any other torch requirement would pull a CUDA build of several GB.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,gpu,demo,plots,dev,postgres]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# bubblewrap is the task sandbox: nodes refuse to start without it (unless --allow-unsandboxed).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap; \
	  else \
	    echo "NOTICE: install bubblewrap (the task sandbox); sandboxed tests will be skipped"; \
	  fi; }

demo: $(STAMP) sandbox
	$(BIN)/lumbung demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# In-process tests on both cores. End-to-end tests two at a time, the CPU-heavy training ones
# one after another on one worker (--dist loadgroup, xdist_group "training"). Benchmark smoke
# tests last and alone: they time what they run. Coverage is of the in-process tests.
test: lint sandbox
	bash scripts/check-postgres
	$(BIN)/pytest -q -n 2 --cov --cov-report=term tests/unit tests/integration
	$(BIN)/pytest -q -n 2 --dist loadgroup tests/e2e
	$(BIN)/pytest -q tests/bench

# The torch-free lane: the hub installs and works with none of the extras (no torch, scikit-learn,
# matplotlib or NVML), proven by its in-process tests in a venv of its own: the unit tests of
# every package a hub imports, and the hub's integration tests.
HUB_VENV := .venv-hub
HUB_UNIT := $(addprefix tests/unit/,ledger market verify wire crypto store hub test_config.py)
test-hub:
	test -x $(HUB_VENV)/bin/python || $(PY) -m venv $(HUB_VENV)
	$(HUB_VENV)/bin/pip install --quiet -e '.[dev,postgres]'
	$(HUB_VENV)/bin/python scripts/check-no-extras
	$(HUB_VENV)/bin/pytest -q -n 2 -p no:cacheprovider $(HUB_UNIT) tests/integration

bench: $(STAMP)
	$(BIN)/python benchmarks/dispatch.py

clean:
	rm -rf $(VENV) $(HUB_VENV) .pytest_cache .mypy_cache .ruff_cache
