# Fusion Gateway — the two commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
UV ?= uv
ZONES := default identity audit
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
DEBIAN_TOOLS := pdftotext:poppler-utils xgettext:gettext dcmdump:dcmtk dciodvfy:dicom3tools chromium:chromium nginx:nginx-light \
	Orthanc:orthanc

.PHONY: run test test-cluster lint install install-dev lock sysdeps migrate seed serve clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	touch $@

# The runtime lock is all that make run (and the image) installs; the tests and linters
# add the dev lock, which pins only the tools, at versions that agree with the runtime lock.
$(DEV_STAMP): requirements-dev.lock $(STAMP)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock -r requirements-dev.lock
	touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

# Both locks from pyproject.toml with uv (pip install uv). The current pins are kept
# (uv prefers the versions already in the output file): LOCK_ARGS=--upgrade moves them.
LOCK := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(LOCK_ARGS)
lock:
	$(LOCK) pyproject.toml -o requirements.lock
	$(LOCK) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock \
	  $$(sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' requirements.lock | sort -u)

# Debian packages the tests need: dcmtk (real DICOM peers), dicom3tools (IOD validator),
# chromium (the browser test drives it through Playwright; no browser is downloaded),
# nginx (the TLS front of the cluster test; nginx-light has ssl, http2 and websockets),
# Orthanc and its DICOMweb plugin (the PACS the query/retrieve tests search, retrieve from and
# send results to, over DIMSE and DICOMweb).
sysdeps:
	@missing=""; \
	for entry in $(DEBIAN_TOOLS); do PATH="$$PATH:/usr/sbin" command -v $${entry%%:*} >/dev/null || missing="$$missing $${entry##*:}"; done; \
	test -e $(ORTHANC_DICOMWEB) || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "ERROR: the tests need Debian packages:$$missing — run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

migrate: install
	@for zone in $(ZONES); do $(BIN)/python manage.py migrate --database $$zone --noinput -v0 || exit 1; done

seed: migrate
	$(BIN)/python manage.py seed_demo

# daphne processes (one per core, GATEWAY_WEB_PROCESSES) serve the gateway on one port;
# beside them, the audit chain head is signed every minute, the volumes of series
# stored over STOW-RS are built (ingest never builds them on the request's path), and
# PACS retrievals and results queued for the PACS are run (pacs_worker).
serve:
	$(BIN)/python manage.py collectstatic --noinput -v0
	@$(BIN)/python manage.py audit_checkpoint --every 60 & checkpoints=$$!; \
	$(BIN)/python manage.py build_volumes --watch & volumes=$$!; \
	$(BIN)/python manage.py pacs_worker & pacs=$$!; \
	trap 'kill $$checkpoints $$volumes $$pacs 2>/dev/null' EXIT INT TERM; \
	echo "audit checkpoints every 60 s; volumes of new series built and PACS work run in the background"; \
	$(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

run: seed
	@$(MAKE) --no-print-directory serve

test: install-dev sysdeps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The deployment as processes: nginx (TLS) in front of two daphne, two render workers
# over Redis, the SCP, PostgreSQL with least roles; kills a worker and a server mid-session.
# Needs PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379 (.ci/run starts them).
test-cluster: install-dev sysdeps
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m pytest -m cluster tests/deploy/test_cluster.py $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
