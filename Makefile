# Kiln — every target sets itself up: a fresh clone needs only python3 (3.11+),
# the Google Cloud CLI with its Firestore and Pub/Sub emulators, and Java.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Feature fragments (mk/*.mk) may add prerequisites to TEST_DEPS (e.g. a browser).
TEST_DEPS :=
-include mk/*.mk

.PHONY: setup demo dev test test-fast lint typecheck bench chaos chaos-long package clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) ## virtual environment, dependencies, emulator check
	@$(PY) -m kiln_dev.preflight

demo: setup ## start the local stack, run an image and a GLB job end to end, stop
	$(PY) -m kiln_dev demo

dev: setup ## run the local stack until Ctrl-C
	$(PY) -m kiln_dev dev

lint: setup
	$(PY) -m ruff check shared dev functions tests scripts
	$(PY) -m mypy shared/kiln dev/kiln_dev

# Modules that start stacks of their own (fault proxies, restarts, companions) run in
# their own pytest process, so nothing one of them leaves behind reaches another.
ISOLATED := tests/e2e/test_reliability.py tests/e2e/test_chaos.py tests/e2e/test_telegram.py \
	tests/e2e/test_providers_e2e.py

test: setup lint $(TEST_DEPS) ## lint, type-check, then every test layer on the real emulators
	$(PY) -m pytest $(addprefix --ignore=,$(ISOLATED))
	@for module in $(ISOLATED); do $(PY) -m pytest $$module || exit 1; done

test-fast: setup ## unit tests only
	$(PY) -m pytest tests/unit

bench: setup ## acknowledgement latency, orchestration overhead, memory
	$(PY) -m kiln_dev.bench

chaos: setup ## the chaos suite, short run
	$(PY) -m kiln_dev.chaos --jobs 100

chaos-long: setup ## the chaos suite, long run (500+ jobs, all fault kinds)
	$(PY) -m kiln_dev.chaos --jobs 500

package: setup ## build each function's deployable source under build/functions/
	$(PY) scripts/package_functions.py

clean:
	rm -rf $(VENV) build out .pytest_cache .mypy_cache .ruff_cache
