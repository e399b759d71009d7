# The local Cloud Tasks emulator and its benchmark. Included by the main Makefile.
# gcloud-tasks-emulator needs protobuf<5, so it lives in a venv of its own (.venv-tasks),
# run as a process by the local stack (dev/kiln_dev/tasks_emulator.py). Pinned exactly:
# that launcher reuses the package's servicer and state class (pyproject's extra
# `tasks-emulator` names the same package).

TASKS_VENV := .venv-tasks
TASKS_EMULATOR_REQ := gcloud-tasks-emulator==0.6.2
TASKS_STAMP := $(TASKS_VENV)/.installed-$(shell echo '$(TASKS_EMULATOR_REQ)' | cksum | cut -d' ' -f1)

TEST_DEPS += tasks-emulator

.PHONY: tasks-emulator bench-scheduler

# Every target that starts the local stack goes through setup.
setup: tasks-emulator

$(TASKS_STAMP):
	@test -x $(TASKS_VENV)/bin/python || $(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(TASKS_EMULATOR_REQ)'
	@rm -f $(TASKS_VENV)/.installed-*
	@touch $@

tasks-emulator: $(TASKS_STAMP) ## the Cloud Tasks emulator's own venv (.venv-tasks)

bench-scheduler: setup ## scheduled checks through the local Cloud Tasks emulator: latency, throughput
	$(PY) -m kiln_dev.bench_scheduler
