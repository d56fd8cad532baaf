# The two commands: `make demo` and `make test` (and `make serve` after the demo). Each
# creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: demo serve test test-localstack lint check venv clean

demo: $(STAMP)
	$(BIN)/s3pull demo

# The demo's emulator kept running with a working configuration, until Ctrl-C: it prints
# the commands to run next (README: "From the demo to your own first mirror").
serve: $(STAMP)
	$(BIN)/s3pull demo --serve

# The tests mostly wait (moto, long polls, agents as child processes), so pytest-xdist runs
# them in TEST_WORKERS processes, each with its own moto server. TEST_WORKERS=0: serially.
TEST_WORKERS ?= 4

test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS)

# The event path again on LocalStack (Python 3.13, installed into .localstack/ on first
# use): the second emulator, whose events differ from moto's the way AWS's do.
LOCALSTACK_TESTS := tests/test_agent.py tests/test_trigger.py tests/test_trust.py \
	tests/test_dispatch.py tests/test_ordering.py tests/test_prefix_folder.py \
	tests/test_forbidden.py tests/test_logs.py tests/test_url_recipe.py \
	tests/test_s3http.py tests/test_inbox.py tests/test_ranged.py

test-localstack: $(STAMP)
	tests/localstack/run $(BIN)/pytest -q $(LOCALSTACK_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench
	$(BIN)/mypy

# What CI runs.
check: lint test demo

venv: $(STAMP)

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "s3pull needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo "$(PYTHON) cannot create virtual environments: apt-get install python3-venv"; exit 1; }
	# Updated in place when pyproject.toml changes: never pulled from under a running test.
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Benchmarks (issue: bench/) and packages (packaging/) keep their targets beside them.
-include bench/bench.mk packaging/packaging.mk

clean:
	rm -rf $(VENV) .localstack build agent/*.egg-info .pytest_cache .mypy_cache .ruff_cache
