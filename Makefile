# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install splitwatch with what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# alibi-detect (the other drift engine) holds numpy below 2: its tests run in their own virtualenv
ALIBI_VENV ?= .venv-alibi

.PHONY: demo test test-alibi prerequisites lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(ALIBI_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(ALIBI_VENV)
	$(ALIBI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ALIBI_VENV)/bin/python -m pip install --quiet -e '.[alibi]' 'pytest>=8' 'chatterbot-corpus>=1.2'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/splitwatch demo

# system tools the tests need (promtool, prometheus, chromium): checked, or installed as root on Debian
prerequisites:
	@.ci/prerequisites

# The suite on the core install (numpy 2, the scipy drift engine), then the drift engines compared
# where alibi-detect is installed (tests marked alibi).
test: prerequisites $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not alibi"
	$(MAKE) test-alibi

test-alibi: $(ALIBI_VENV)/bin/.installed
	$(ALIBI_VENV)/bin/python -m pytest -q -m alibi tests/test_drift_engines.py

bench: $(BIN)/.installed
	$(BIN)/python bench/proxy_overhead.py

clean:
	rm -rf $(VENV) $(ALIBI_VENV) .splitwatch
