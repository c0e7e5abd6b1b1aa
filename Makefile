# The two commands of README.rst, `make run` and `make test`, plus `make lock`.
#
# Dependencies come from the lock files in requirements/ (exact versions, checked by hash):
# service.txt for the server, test.txt for the server and its tests. setup.cfg keeps open
# ranges for those who install the package into an environment of their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/replayserver.yaml

.PHONY: run test bench lock install-service install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The locked dependencies (build tools included), installed once per change of the lock file.
$(VENV)/.%-deps: requirements/%.txt | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r $<
	touch $@

# The package itself, every time: a normal, non-editable install, so that twistd finds the
# plugin, with the locked setuptools already in the virtualenv (no download). Setuptools builds
# in the work tree; its build/ and egg-info go at once, since a stale build/ can ship files
# that were deleted since.
define install_package
	@$(BIN)/pip install --quiet --no-deps --no-build-isolation --force-reinstall .
	@rm -rf build replayserver.egg-info
endef

install-service: $(VENV)/.service-deps
	$(install_package)

install-test: $(VENV)/.test-deps
	$(install_package)

# An empty --pidfile: twistd writes no twistd.pid into the work tree.
run: install-service
	@$(BIN)/twistd -n --pidfile= replayserver --config $(CONFIG)

# The whole suite (servers started by the end-to-end tests run with two worker processes),
# then the end-to-end tests again with everything in one process (server.workers: 1).
test: install-test
	REPLAYSERVER_SERVER_WORKERS=2 $(BIN)/python -m pytest $(PYTEST_ARGS)
	REPLAYSERVER_SERVER_WORKERS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) tests/test_e2e_*.py

bench: install-test
	$(BIN)/python -m benchmarks

# Regenerate both lock files with the newest releases that setup.cfg allows (pip-tools, put
# into the virtualenv if missing). The test lock is constrained by the service lock, so the
# tests run on the very versions the server runs on. pip's own configuration files and any
# extra index or wheel folder from the environment are left out: a lock must name only files
# that everyone can download from the default index.
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --upgrade --generate-hashes \
	--allow-unsafe --strip-extras --build-deps-for wheel --no-emit-index-url --no-emit-find-links

$(BIN)/pip-compile: | $(BIN)/python
	$(BIN)/pip install --quiet pip-tools

lock: $(BIN)/pip-compile
	$(PIP_COMPILE) --output-file requirements/service.txt setup.cfg
	$(PIP_COMPILE) --extra test --constraint requirements/service.txt \
		--output-file requirements/test.txt setup.cfg
	rm -rf build replayserver.egg-info

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache .hypothesis
