# asyncgate: `make run` starts the gateway, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/routes.yaml
# Local state for `make run` (the shipped default is /var/lib/asyncgate, for systemd).
export ASYNCGATE_STORE ?= sqlite:///$(CURDIR)/var/asyncgate.db

.PHONY: run consumer test lint fmt services check-config clean

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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
