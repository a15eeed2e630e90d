# vidfeat: `make demo` and `make test` set everything up on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo/out

.PHONY: install test test-reliability demo bench lint clean

install: $(STAMP)

# Reinstalls only when the project's dependencies change; the project itself is editable.
# pyproject.toml asks for compatible torch versions (users keep their CUDA builds); this
# install pins the exact builds that lie on the machine's disk through constraints.txt, since
# a loose requirement alone makes pip fetch gigabytes of newer wheels.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --constraint constraints.txt
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[test,ray]'
	touch $(STAMP)

# Two pytest workers: the suite mostly waits on the vidfeat processes it starts, so one core
# sat idle (6.4 min instead of 11 on 2 cores). The Ray tests share one worker (xdist_group).
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

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
