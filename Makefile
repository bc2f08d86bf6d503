# lbcdn developer commands. GNU make; needs only python3 (with venv) on a Debian machine.
#
#   make install    .venv with the package and its test extras (quick when already done)
#   make native     compile the hot-path modules with mypyc (when a source changed)
#   make run        install what running needs, compile if a compiler is there, serve
#                   config/default.yaml
#   make test       install, Debian packages the suite needs, compile, typecheck, pytest
#   make typecheck  mypy lbcdn
#   make bench      install, nginx + wrk, benchmarks/run.py  (BENCH_ARGS="--duration 5 proxy")
#   make clean

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Rebuilt when pyproject.toml changes (or the venv is missing). STAMP: the package and its test
# extras (test, bench, typecheck); RUN_STAMP: what `make run` needs, a subset of it, so that a
# first `make run` does not wait for the test tools.
STAMP     := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

CONFIG     ?= config/default.yaml
PYTEST_ARGS ?= -q
BENCH_ARGS ?=

# The hot path compiled with mypyc (lbcdn/native.py) needs a C compiler and Python.h; Debian's
# python3-dev only when this interpreter has no headers of its own (pyenv and python.org do).
NATIVE_DEBS := gcc libc6-dev $(shell $(PYTHON) -c 'import os, sysconfig; \
  print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")')

# Debian packages the test suite needs (real peers for end-to-end tests). Extend, do not replace.
# knot: a real DNS secondary/primary; systemd: systemd-analyze for the unit file; docker-compose:
# `config` validation; tini + util-linux (unshare): the container's PID 1; openssl: test
# certificates; chromium: the status page in a real browser.
TEST_DEBS  := curl openssl knot systemd docker-compose tini util-linux chromium $(NATIVE_DEBS)
BENCH_DEBS := nginx wrk util-linux dnsperf knot openssl $(NATIVE_DEBS)

# Rebuilds only when a compiled module's source changed; fails on a compile error.
NATIVE := $(BIN)/python -m lbcdn.native build --if-stale

# apt-get directly as root, else through sudo when there is one (else apt-get fails loudly).
SUDO := $(shell if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)

# $(call apt_ensure,PACKAGES): install only the missing ones; apt-get update first.
define apt_ensure
	@missing=""; \
	for p in $(1); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

.PHONY: help venv install native run test typecheck pytest test-debs bench bench-debs clean

help:
	@sed -n '3,10p' Makefile | sed 's/^# \{0,1\}//'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@ $(RUN_STAMP)

# mypy (the `native` extra: mypyc) only when this machine can compile the hot path (a C compiler
# and Python.h, as lbcdn.native checks); without them `make run` runs interpreted anyway.
RUN_EXTRAS = $(shell $(PYTHON) -c 'import os, shutil, sysconfig; \
  cc = (sysconfig.get_config_var("CC") or "cc").split()[0]; \
  ok = shutil.which(cc) and os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"); \
  print("[native]" if ok else "")')

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.$(RUN_EXTRAS)'
	@touch $@

venv install: $(STAMP)

native: $(STAMP)
	$(NATIVE)

# Without a C compiler the demo runs interpreted (same behaviour, more CPU per request).
run: $(RUN_STAMP)
	$(NATIVE) --optional
	@mkdir -p var/buckets/site && cp -rn config/demo-site/. var/buckets/site/
	$(BIN)/lbcdn serve --config $(CONFIG)

test-debs:
	$(call apt_ensure,$(TEST_DEBS))

typecheck: $(STAMP)
	$(BIN)/mypy lbcdn

# The whole suite on the compiled hot path (LBCDN_NATIVE=1: the build must have taken), then the
# unit tests of the compiled modules once more interpreted: behaviour must not depend on it.
pytest: $(STAMP) test-debs
	$(NATIVE)
	LBCDN_NATIVE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)
	unit=$$($(BIN)/python -m lbcdn.native tests) && \
	  LBCDN_NATIVE=0 $(BIN)/python -m pytest $(PYTEST_ARGS) $$unit

test: pytest typecheck

bench-debs:
	$(call apt_ensure,$(BENCH_DEBS))

bench: $(STAMP) bench-debs
	$(NATIVE)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache benchmarks/results var
	find lbcdn -name '*.so' -delete && rm -f lbcdn/_native.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
