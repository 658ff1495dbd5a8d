# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install splitwatch with what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test prerequisites lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/splitwatch demo

# system tools the tests need (promtool, prometheus, chromium): checked, or installed as root on Debian
prerequisites:
	@.ci/prerequisites

test: prerequisites $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/proxy_overhead.py

clean:
	rm -rf $(VENV) .splitwatch
