# Signed webhook delivery benchmark (docs/webhooks.md). Included by the main Makefile.
.PHONY: bench-webhooks

bench-webhooks: setup ## signed webhooks through a flaky and a 2-minute-down receiver (~4 min)
	$(PY) -m kiln_dev.bench_webhooks $(ARGS)
