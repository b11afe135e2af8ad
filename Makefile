# The two entry points of the README, plus helpers. Every target sets up what it needs first.
VENV ?= .venv
RUN = . $(VENV)/bin/activate &&

.PHONY: setup pipeline test test-fast lint bench readme clean

setup:
	@bash scripts/setup.sh

pipeline: setup  ## set up, run the whole DVC pipeline, say where the results are
	@$(RUN) dvc repro
	@$(RUN) distillops summary

test: setup  ## set up, lint, run every test (the slow end-to-end ones too), one worker per core
	@$(RUN) ruff check pipeline plugins tests benchmarks examples scripts
	@$(RUN) python -m pytest -q -n auto --dist loadscope

test-fast: setup  ## everything but the slow end-to-end tests
	@$(RUN) python -m pytest -q -m "not slow"

lint: setup
	@$(RUN) ruff check pipeline plugins tests benchmarks && ruff format --check pipeline plugins

bench: setup
	@$(RUN) python benchmarks/run.py

readme: setup  ## regenerate the plugin table in README.md from the installed built-ins
	@$(RUN) python scripts/readme_plugins.py

clean:  ## remove pipeline outputs (not the venv, the MLflow store or the DVC cache)
	rm -rf data/prepared models reports/plots .checkpoints
