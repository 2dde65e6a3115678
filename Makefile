# The two commands the README starts with: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
RUN_DIR ?= var/runs/seed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Train the seed notebook's AutoEncoder (50 epochs) and write its checkpoint and figures.
run: $(STAMP)
	$(VENV)/bin/latentforge train --preset seed --download --overwrite --out $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/train_speed.py

clean:
	rm -rf $(VENV) var test-output
