# asyncgate: `make run` starts the gateway, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/routes.yaml
# Local state for `make run` (the shipped default is /var/lib/asyncgate, for systemd).
export ASYNCGATE_STORE ?= sqlite:///$(CURDIR)/var/asyncgate.db

N ?= 1000

.PHONY: demo run consumer test lint fmt services check-config clean bench faults

# The seed's experiment: N customers sync, then async, on the embedded transport and store
# (or on RabbitMQ when ASYNCGATE_BROKER is set). Needs nothing but Python.
demo: $(STAMP)
	$(BIN)/python -m demo.experiment --n $(N)

# The benchmark suite (issue 8): pass-through, intake, drain, memory and the seed experiment,
# side by side with nginx and raw broker publishing; rewrites BENCHMARKS.md in under 10 minutes.
bench: $(STAMP)
	bash scripts/ensure-services.sh rabbitmq wrk nginx
	$(BIN)/python -m bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

services:
	bash scripts/ensure-services.sh rabbitmq postgresql promtool

run: $(STAMP) services
	$(BIN)/python -m gateway --config $(CONFIG)

consumer: $(STAMP) services
	$(BIN)/python -m consumer --config $(CONFIG)

check-config: $(STAMP)
	$(BIN)/python -m gateway --config $(CONFIG) --check-config

test: $(STAMP) services
	$(BIN)/pytest

# The fault suite's long form (issue 9): faults under load, reconciled; rewrites FAULTS.md.
# `make test` runs its short form. Private RabbitMQ and PostgreSQL instances are started
# for the restart scenarios; the shared ones are never restarted.
faults: $(STAMP) services
	ASYNCGATE_FAULTS=long $(BIN)/pytest tests/faults -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
