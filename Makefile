# The two commands: `make run` and `make test`. Both create .venv and install pinned dependencies when missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
OUTPUT ?= ./sluice-data

export AWS_EC2_METADATA_DISABLED := true
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: run run-web test check install browser lint bench clean

$(BIN)/.installed: pyproject.toml requirements.lock requirements-models.lock infra/install.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python infra/install.py
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/sluice demo --corpus demo-corpus --output $(OUTPUT)

# The web demo: WARC crawls in, extracted main text, token shards out (README, "The demo").
run-web: install
	$(BIN)/sluice demo --web --corpus demo-web-corpus --output $(OUTPUT)

# The report's test opens it in Debian's headless Chromium (tests/test_report_browser.py); installed when missing
# and this user may (root, as in CI); elsewhere that test says it was skipped and why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the report's browser test will be skipped"; }

# The suite starts hundreds of Python processes: the installed modules are compiled once for them (infra/install.py).
$(BIN)/.compiled: $(BIN)/.installed
	$(BIN)/python infra/install.py --compile
	touch $@

# Two pytest workers (pytest-xdist), a test file on one worker: most of the suite waits on servers and subprocesses,
# so two share 2 cores well (tests 19:41-20:34 instead of 32:13 on 2 cores). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install browser $(BIN)/.compiled
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: install
	$(BIN)/ruff check .

# The fast loop: lint and the tests that need no server, demo corpus, subprocess pipeline or browser.
check: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" -x

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) sluice-data demo-corpus demo-corpus.version demo-web-corpus
