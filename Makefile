# target-everflow: the two commands of the quick start, and a few more.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
MELTANO_VENV ?= .venv-meltano
MELTANO_VERSION ?= 4.4.1

.PHONY: lint demo demo-meltano test test-fast test-e2e test-soak bench check-readme clean wheel wheel-check plugin-files

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

# Meltano for the end-to-end pipeline tests (its own virtualenv: it pins its own packages;
# the tests run `meltano install` for the taps and the target themselves).
$(MELTANO_VENV)/.installed:
	$(PYTHON) -m venv $(MELTANO_VENV)
	$(MELTANO_VENV)/bin/python -m pip install --quiet "meltano==$(MELTANO_VERSION)"
	touch $@

## make demo: dry run on the shipped sample Segment events (no Everflow account needed)
demo: $(VENV)/.installed
	rm -rf output/demo
	$(BIN)/target-everflow --config samples/demo_config.json --input samples/segment_events.singer > /dev/null
	@echo
	@echo "Planned postbacks: output/demo/everflow_dry_run.jsonl"
	@echo "Dead letters:      output/demo/dead_letter.jsonl"
	@echo "Run summary:       output/demo/summary.json"

## make demo-meltano: the same kind of dry run through Meltano, with no database and no account:
## Meltano (pinned, its own virtualenv), `meltano install` of the file tap and the target, then
## tap-filesanywhere over the shipped sample of Segment's raw archive (samples/segment-archive/,
## gzipped JSON lines) into target-everflow. Run it again: the tap's bookmark (Meltano's state)
## means nothing new is planned. No database is touched (tap-postgres is not even installed).
MELTANO := $(MELTANO_VENV)/bin/meltano
DEMO_ARCHIVE_DIR ?= samples/segment-archive
demo-meltano: $(MELTANO_VENV)/.installed
	MELTANO_SEND_ANONYMOUS_USAGE_STATS=false $(MELTANO) install tap-filesanywhere target-everflow
	MELTANO_SEND_ANONYMOUS_USAGE_STATS=false SEGMENT_ARCHIVE_DIR=$(DEMO_ARCHIVE_DIR) \
	  $(MELTANO) --environment=dev run tap-filesanywhere target-everflow
	@echo
	@echo "Planned postbacks: output/meltano/everflow_dry_run.jsonl"
	@echo "Dead letters:      output/meltano/state/dead_letter.jsonl"
	@echo "Run summary:       output/meltano/summary.json"

# pytest, then its exit status; 5 (it collected no tests: a marker or -k that matches nothing)
# is said in words, and stays a failure.
PYTEST = $(BIN)/python -m pytest
define run_pytest
	$(PYTEST) $(1) $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest collected no tests ($(1) $(PYTEST_ARGS))" >&2; fi; \
	exit $$status
endef
# make test's parallel workers (pytest-xdist): most tests wait (on servers, leases, retries)
# more than they compute, so more workers than cores pays; TEST_WORKERS=0 runs them in order.
TEST_WORKERS ?= 4
XDIST = -n $(TEST_WORKERS) --dist loadgroup

## make test: the suite in parallel (TEST_WORKERS, default 4), but the Meltano/warehouse
## pipelines (make test-e2e) and the fault soak (make test-soak), which CI runs after it
test: $(VENV)/.installed-test
	$(call run_pytest,$(XDIST) -m "not e2e and not soak")

## make lint: ruff (lint, format check), mypy and the import rules (lint-imports, pyproject.toml's
## [tool.importlinter]); CI runs it before the tests
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## make test-fast: everything but the end-to-end pipelines, the soak and the slow lease tests
test-fast: $(VENV)/.installed-test
	$(call run_pytest,$(XDIST) -m "not e2e and not soak and not slow")

## make test-e2e: the Meltano/warehouse pipelines, one after another (they share .meltano/)
test-e2e: $(VENV)/.installed-test $(MELTANO_VENV)/.installed
	$(call run_pytest,-m e2e)

## make test-soak: the fault soak (about a minute of faults, kills and pauses), on its own:
## its timings are part of what it checks
test-soak: $(VENV)/.installed-test
	$(call run_pytest,-m soak)

## make bench: throughput, memory and streaming-latency benchmarks (writes bench/RESULTS.md);
## BENCH_ARGS=--only-trickle: only the latency behind a streaming tap
bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Building the wheel needs only `build` (it makes its own isolated environment for setuptools).
$(VENV)/.installed-build: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "build>=1.2"
	touch $@

## make wheel: the sdist and the wheel into dist/ (python -m build)
wheel: $(VENV)/.installed-build
	rm -f dist/target_everflow-*
	$(BIN)/python -m build --outdir dist .

## make wheel-check: build the wheel, install it into a fresh virtualenv, run --about and the demo
## from it in a scratch directory outside the repository (CI runs this)
wheel-check: $(VENV)/.installed-test
	$(BIN)/python scripts/wheel_check.py

## make plugin-files: after changing a setting in settings.py, regenerate meltano.yml's target
## settings, the Meltano Hub file (plugin/loaders/target-everflow/) and README's tables
plugin-files: $(VENV)/.installed-test
	$(BIN)/python scripts/update_plugin_files.py
	$(BIN)/python scripts/update_readme.py

clean:
	rm -rf output .target-everflow everflow_dry_run.jsonl .pytest_cache dist build .import_linter_cache .grimp_cache
