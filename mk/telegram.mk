# The Telegram webhook's benchmark (issue 15, item 4). Included by the main Makefile.

.PHONY: bench-telegram

bench-telegram: setup ## Telegram webhook ack p50/p99 with a Bot API that answers 6 s late; time to the working message
	$(PY) -m kiln_dev.bench_telegram $(ARGS)
