# vidfeat: `make demo` and `make test` set everything up on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo/out

.PHONY: install test test-reliability demo bench lint clean

install: $(STAMP)

# Reinstalls only when the project's dependencies change; the project itself is editable.
# torch/torchvision are pinned exactly (their wheels lie on the machine's disk; a loose
# requirement makes pip fetch gigabytes).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-reliability: install
	$(PY) -m pytest -q -s -m reliability

demo: install
	bash demo/run.sh $(DEMO)

bench: install
	bash bench/run.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo/out .pytest_cache
