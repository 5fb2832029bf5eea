# `make test` is what CI runs (.ci/run); `make demo` starts the whole system locally.
PYTHON ?= python3
VENV := .venv

.PHONY: venv test demo

venv: $(VENV)/.installed

# Re-installs only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/recap-status demo
