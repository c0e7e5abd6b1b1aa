# The two commands of README.rst: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= etc/replayserver.yaml

.PHONY: run test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet ".[test]"
	touch $(STAMP)

# Reinstall the package itself every time (a normal, non-editable install, so that
# twistd finds the plugin), reusing the dependencies already in the virtualenv.
install: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --force-reinstall .

run: install
	$(BIN)/twistd -n replayserver --config $(CONFIG)

# The whole suite (servers started by the end-to-end tests run with two worker processes),
# then the end-to-end tests again with everything in one process (server.workers: 1).
test: install
	REPLAYSERVER_SERVER_WORKERS=2 $(BIN)/python -m pytest $(PYTEST_ARGS)
	REPLAYSERVER_SERVER_WORKERS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) tests/test_e2e_*.py

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache .hypothesis
