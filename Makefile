# One place for every command; `make setup` is idempotent and the others call it.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov's own venv (its pins clash with the project's; requirements-checkov.txt)
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# A real PACS for the tests of launcher/pacs (issue 20): Debian's Orthanc with its DICOMweb plugin. The tests start it
# by hand on 127.0.0.1 (its service cannot start in a container) and fail, not skip, without it.
ORTHANC_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
ORTHANC_STAMP := $(VENV)/.orthanc
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true
# Extra CDK context for deploy/destroy/synth, e.g. make deploy CDK_ARGS="-c destroyData=true"
CDK_ARGS ?=
# Extra flags for python -m bench, e.g. make bench BENCH_ARGS="--quick"
BENCH_ARGS ?=
# The training image's lock (make lock): training/requirements.txt with the sha256 of every file PyPI has for each
# pin, for the image's Python 3.12 on x86-64 Linux. --no-deps: every dependency of the pins is a package of the base
# image (tests/image/test_requirements.py checks it), and the build installs the lock with --require-hashes, so a
# dependency from anywhere else stops it. LOCK_OUT lets the tests write it elsewhere.
LOCK_OUT ?= training/requirements-lock.txt
UV_LOCK_ARGS := --no-deps --generate-hashes --python-version 3.12 --python-platform x86_64-manylinux_2_34 \
	--only-binary :all: --no-python-downloads --no-progress --quiet --custom-compile-command "make lock"

.PHONY: help setup test demo synth deploy destroy lint bench lock clean

help:
	@echo "make setup    install Python and Node dependencies into .venv and node_modules (idempotent)"
	@echo "make test     set up, then run the whole test suite"
	@echo "make demo     set up, then walk the journey locally against an AWS emulator (no account needed)"
	@echo "make synth    synthesize the CloudFormation template (cdk.out/)"
	@echo "make deploy   deploy the stack to the AWS account of your credentials (needs Docker for the image)"
	@echo "make destroy  destroy the stack; prints what was kept (data bucket, log bucket, key)"
	@echo "make lint     ruff, mypy, shellcheck"
	@echo "make lock     regenerate training/requirements-lock.txt (hashes) from training/requirements.txt (uv)"
	@echo "make bench    the public sample's pipeline and loop against ours (bench/results/; ~15 min on 2 cores)"

$(STAMP): requirements.txt requirements-dev.txt training/requirements.txt
	@command -v node >/dev/null || { echo "Node.js (>= 20) is missing: install it (https://nodejs.org) and rerun make setup" >&2; exit 1; }
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js with npm and rerun make setup" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

# Installs where it can (root with apt-get); otherwise says how, and setup goes on (only the PACS tests need it).
$(ORTHANC_STAMP): | $(STAMP)
	@if command -v Orthanc >/dev/null && test -f $(ORTHANC_PLUGIN); then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends orthanc orthanc-dicomweb >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			orthanc orthanc-dicomweb >/dev/null; } && touch $@; \
	else echo "Orthanc is missing (the tests of launcher/pacs need it): run make setup as root on Debian or Ubuntu," \
		"or install the packages orthanc and orthanc-dicomweb (https://www.orthanc-server.com/download.php)" >&2; fi

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

setup: $(STAMP) $(CHECKOV_STAMP) $(ORTHANC_STAMP) node_modules/.package-lock.json

test: setup
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

demo: setup
	$(PY) -m demo

synth: setup
	npx cdk synth --quiet $(CDK_ARGS)

deploy: setup
	npx cdk deploy --require-approval broadening $(CDK_ARGS)

destroy: setup
	$(PY) -m infra.teardown $(CDK_ARGS)

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

lock: $(STAMP)
	$(VENV)/bin/uv pip compile $(UV_LOCK_ARGS) training/requirements.txt -o $(LOCK_OUT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck infra/lifecycle/*.sh .ci/run

clean:
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache
