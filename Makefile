# Two commands on a fresh machine (only Python 3.11+, git and make needed):
#   make run    set up, then run the bridge locally on SQLite
#   make test   set up, then run the tests
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test check clean

$(BIN)/bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: $(BIN)/bridge
	$(BIN)/bridge init --if-missing
	$(BIN)/bridge demo

test: $(BIN)/bridge
	$(BIN)/pytest -q

check: $(BIN)/bridge
	$(BIN)/bridge check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
