# The two commands the README starts with: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
RUN_DIR ?= var/runs/seed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run train-seed test test-reliability compose-test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# API + worker on the embedded defaults (SQLite and a filesystem broker under
# ./var, no servers); queues the seed preset on first start.
run: $(STAMP)
	LATENTFORGE_ALLOW_DOWNLOAD=$${LATENTFORGE_ALLOW_DOWNLOAD:-1} $(VENV)/bin/latentforge up --host $(HOST) --port $(PORT)

# The seed notebook's AutoEncoder alone, without queue or database.
train-seed: $(STAMP)
	$(VENV)/bin/latentforge train --preset seed --download --overwrite --out $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest

# The fault-injection suite alone (private PostgreSQL and Redis servers; prints the fault table).
test-reliability: $(STAMP)
	LATENTFORGE_TEST_CHECKPOINT_KILLS=20 $(PY) -m pytest -m reliability tests/reliability

# docker-compose.yml itself under Podman (tests/compose): stand-in base images, the project's images,
# a staged `podman-compose up`, the end-to-end jobs, a worker killed mid-training, `down -v`.
compose-test: $(STAMP)
	LATENTFORGE_COMPOSE_TEST=1 $(PY) -m pytest -m compose -s tests/compose

bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/queue_latency.py
	$(PY) bench/shared_host.py

clean:
	rm -rf $(VENV) var test-output
