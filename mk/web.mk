# Reference web app (clients/web) and its browser tests. Included by the main Makefile.
# web-deps: what tests/browser needs on a fresh machine (as root, no prompts): Debian's
# chromium (Playwright drives it; no browser download) and the app's npm packages.

WEB_DIR := clients/web

TEST_DEPS += web-deps

.PHONY: web web-deps web-build

web-deps:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian chromium for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
	@test -d $(WEB_DIR)/node_modules || (cd $(WEB_DIR) && npm ci --no-audit --no-fund)

web-build: web-deps ## build clients/web into clients/web/dist
	cd $(WEB_DIR) && npm run build

web: setup web-deps ## the local stack + the reference web app at http://127.0.0.1:5173/?uid=alice
	$(PY) -m kiln_dev.webapp
