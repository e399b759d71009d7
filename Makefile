# Kiln — every target sets itself up: a fresh clone needs only python3 (3.11+),
# the Google Cloud CLI with its Firestore and Pub/Sub emulators, and Java.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Feature fragments (mk/*.mk) may add prerequisites to TEST_DEPS (e.g. a browser).
TEST_DEPS :=
-include mk/*.mk

.PHONY: setup demo dev test test-fast lint typecheck bench bench-parts bench-ab bench-batch bench-callbacks bench-waits bench-fairness chaos chaos-long package lock tfcheck clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check -e clients/python
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) ## virtual environment, dependencies, emulator check
	@$(PY) -m kiln_dev.preflight

demo: setup ## start the local stack, run an image and a GLB job end to end, stop
	$(PY) -m kiln_dev demo

dev: setup ## run the local stack until Ctrl-C
	$(PY) -m kiln_dev dev

lint: setup
	$(PY) -m ruff check shared dev functions tests scripts clients/python
	$(PY) -m mypy shared/kiln dev/kiln_dev clients/python/kiln_client

# Offline `terraform validate` of infra/ against the provider schemas the pins in
# infra/versions.tf name. The checker is not copied here: CI (and every developer) has the
# shared tools folder beside the repository, read-only, at ../shared/. Cloud Build has no
# such folder and runs the real `terraform validate` (cloudbuild.yaml) instead: it sets
# SKIP_TFCHECK=1.
TFCHECK := ../shared/tools/tfcheck/tfcheck.py
tfcheck: $(STAMP) ## check infra/*.tf against the real provider schemas (../shared/tools/tfcheck)
	@if [ -n "$(SKIP_TFCHECK)" ]; then \
	  echo "tfcheck: skipped (SKIP_TFCHECK: terraform validate runs in the pipeline)"; \
	else \
	  test -f $(TFCHECK) || { echo "tfcheck: $(TFCHECK) is missing; the shared tools folder" \
	    "must be checked out beside this repository (as ../shared, which CI always has);" \
	    "make test SKIP_TFCHECK=1 runs the rest" >&2; exit 1; }; \
	  $(PY) $(TFCHECK) infra --quiet; \
	fi

# Two pytest-xdist workers, each handed whole files in the order collected: much of the
# end-to-end layer waits on real timers (leases, backoff, scheduled checks) while the other
# worker keeps the CPU busy. Each worker starts its own session stack on free ports, and no
# client reads os.environ after start-up, so every stack lives beside the others.
# TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2
test: setup lint tfcheck $(TEST_DEPS) ## lint, type-check, tfcheck, then every test layer on the real emulators
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Branch coverage of the runtime from the unit tests alone (fakes, fake clock).
COVERED := shared/kiln/runtime/worker.py,shared/kiln/runtime/checks.py,shared/kiln/runtime/callbacks.py,shared/kiln/core/lifecycle.py,shared/kiln/runtime/sweeper.py,shared/kiln/runtime/progress.py,shared/kiln/runtime/actions.py,shared/kiln/runtime/notify.py,shared/kiln/runtime/accept.py,shared/kiln/core/policy.py
coverage: setup ## branch coverage of worker, lifecycle, sweeper, progress (unit tests only)
	$(PY) -m coverage run --branch --include='$(COVERED)' -m pytest -q tests/unit
	$(PY) -m coverage report -m

test-fast: setup ## unit tests only
	$(PY) -m pytest tests/unit

# ~15 minutes; ARGS=--quick for a 1–2 minute look.
bench: setup ## Kiln against its floor and a Celery + Redis peer: ack, throughput, CPU, e2e, RSS
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	$(PY) -m kiln_dev.bench $(ARGS)

# ~2 minutes: the parts behind make bench's numbers (docs/benchmarks.md, "Where the time goes");
# ARGS=--libraries: the ingress's CPU by library against the Celery + Redis peer's (perf).
bench-parts: setup ## ingress CPU by request kind, the load generator's client, in-process steps, a transaction against a write on a read, relay streams, waking up to a gRPC answer, a queue pass as jobs pile up (ARGS=--libraries: against the peer)
	@case "$(ARGS)" in *--libraries*) command -v redis-server >/dev/null && command -v perf >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq redis-server linux-perf; } ;; esac
	$(PY) -m kiln_dev.bench_parts $(ARGS)

# ~10 minutes: this tree's ingress against another revision's on one stack; ARGS=--base REV
# (default HEAD), --levels 1,16,64, --rounds 6 (docs/benchmarks.md, the tenth pass).
bench-ab: setup ## ingress CPU per job and latency, this working tree against another revision
	$(PY) -m kiln_dev.bench_ab $(ARGS)

bench-batch: setup ## a batch of 100 images through POST /v1/batches: acknowledgement time
	$(PY) -m kiln_dev.bench_batch $(ARGS)

bench-callbacks: setup ## provider callback route latency, serial and 8 concurrent senders
	$(PY) -m kiln_dev.bench_callbacks

# ~12 minutes: one 10-minute remote task beside 200 one-minute ones on 4 worker slots
# (ARGS="--long-seconds 60 --jobs 20" for a quick look).
bench-fairness: setup ## the fair queue: 2,000 jobs from 200 users on the fakes, admission p99 on the stack
	$(PY) -m kiln_dev.bench_fairness $(ARGS)

bench-waits: setup ## what waiting on remote tasks costs: worker-seconds, 200 jobs on 4 slots, callback lag
	$(PY) -m kiln_dev.bench_waits $(ARGS)

chaos: setup ## the chaos suite, short run
	$(PY) -m kiln_dev.chaos --jobs 100

chaos-long: setup ## the chaos suite, long run (500+ jobs, all fault kinds)
	$(PY) -m kiln_dev.chaos --jobs 500

# The functions' runtime dependencies (pyproject's [project].dependencies), every transitive
# one pinned with its hashes, resolved for Cloud Run's python312 on Linux x86_64 whatever
# Python runs here. scripts/package_functions.py copies it into each requirements.txt.
# Existing pins are kept; `make lock UPGRADE=--upgrade` moves everything to the newest.
LOCK := requirements/functions.lock
UPGRADE ?=
lock: $(STAMP) ## re-resolve requirements/functions.lock after a change to the runtime dependencies
	@mkdir -p $(dir $(LOCK))
	$(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes $(UPGRADE) \
	  --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
	  --no-header --output-file $(LOCK)
	@{ printf '%s\n' \
	  "# The Cloud Run functions runtime requirements: pyproject.toml [project].dependencies," \
	  "# every transitive dependency pinned with its hashes, for python312 on Linux x86_64." \
	  "# Generated by uv pip compile --generate-hashes; do not edit. Regenerate with" \
	  "#   make lock                   (after changing [project].dependencies; keeps other pins)" \
	  "#   make lock UPGRADE=--upgrade (everything to the newest allowed versions)" \
	  "# scripts/package_functions.py copies it into each function's requirements.txt;" \
	  "# tests/static/test_lock.py fails when it no longer satisfies pyproject.toml."; \
	  cat $(LOCK); } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

package: setup ## build each function's deployable source under build/functions/
	$(PY) scripts/package_functions.py

clean:
	rm -rf $(VENV) build out .pytest_cache .mypy_cache .ruff_cache
