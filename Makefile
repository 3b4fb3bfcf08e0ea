# The two commands: `make run` starts the portal, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format venv clean base-image

run: $(STAMP)
	@$(BIN)/python -m scripts.run

test: $(STAMP)
	$(BIN)/python -m scripts.test

# The model servers' base image for the docker runtime (needs a Docker Engine and root).
base-image: $(STAMP)
	$(BIN)/python manage.py build_base_image

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

venv: $(STAMP)

# A few progress lines; pip's whole output goes to var/install.log, printed only on failure.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -m scripts.quiet install --python $(PYTHON) --venv $(VENV)
	@touch $(STAMP)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
