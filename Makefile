# Shorthands for tasks.py, which needs nothing but Python (CI runs `python3 tasks.py test`).
PYTHON ?= python3

.PHONY: test demo

test:
	$(PYTHON) tasks.py test $(PYTEST_ARGS)

demo:
	$(PYTHON) tasks.py demo
