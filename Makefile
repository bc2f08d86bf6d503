# lbcdn developer commands. GNU make; needs only python3 (with venv) on a Debian machine.
#
#   make install    .venv with the package and its test extras (quick when already done)
#   make native     compile the hot-path modules with mypyc (when a source changed)
#   make run        install what running needs, compile if a compiler is there, serve
#                   config/default.yaml
#   make test       install, Debian packages the suite needs, compile, typecheck, pytest
#   make typecheck  mypy lbcdn
#   make bench      install, nginx + wrk, benchmarks/run.py  (BENCH_ARGS="--duration 5 proxy")
#   make image      the container image (Dockerfile) with buildah, on a debootstrapped Debian
#   make docs       the documentation site (docs/, mkdocs.yml) into site/, links checked
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
DOCS_STAMP := $(VENV)/.installed-docs

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
# certificates; chromium: the status page in a real browser; IMAGE_DEBS: tests/deploy/
# test_image.py runs `make image`. knot-dnssecutils (kzonecheck), unbound, bind9-dnsutils
# (delv): real validators of signed zones (tests/e2e/test_dnssec.py); pebble: a real ACME CA
# (tests/e2e/test_acme.py); haproxy: a real PROXY protocol peer in front of and behind lbcdn
# (tests/e2e/test_proxy_protocol.py); nginx, wrk: the `s3` benchmark scenario's smoke test
# (tests/benchmarks/test_scenario_s3.py).
IMAGE_DEBS := debootstrap buildah ca-certificates
TEST_DEBS  := curl nghttp2-client openssl knot pebble systemd docker-compose tini util-linux chromium $(NATIVE_DEBS) \
              haproxy nginx wrk \
              $(IMAGE_DEBS) knot-dnssecutils unbound bind9-dnsutils
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

# The container image. No image registry is needed: the base is a Debian bookworm with python3
# (3.11) and venv made by debootstrap, kept in $(IMAGE_CACHE) (a tar) and imported into
# buildah's storage as $(LOCAL_BASE). IMAGE_BASE=docker.io/library/python:3.11-slim builds on
# the public image instead, as `docker build .` does. buildah runs the build's steps in a
# chroot (no container runtime, no cgroups needed), both stages at once, and keeps each step
# as a cached layer, so a build from unchanged files takes seconds; the host's CA bundle is
# lent to the steps, for a TLS-intercepting proxy in front of PyPI.
IMAGE         ?= lbcdn:$(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' lbcdn/__init__.py)
LOCAL_BASE    := localhost/lbcdn-base:bookworm
IMAGE_BASE    ?= $(LOCAL_BASE)
IMAGE_CACHE   := build/image
DEBIAN_MIRROR ?= http://deb.debian.org/debian
BUILDAH       := $(SUDO) buildah
HOST_CA       := /etc/ssl/certs/ca-certificates.crt

.PHONY: help venv install native run test typecheck pytest test-debs bench bench-debs docs clean \
        image image-debs image-base

help:
	@sed -n '3,12p' Makefile | sed 's/^# \{0,1\}//'

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

image-debs:
	$(call apt_ensure,$(IMAGE_DEBS))

image: image-debs $(if $(filter $(LOCAL_BASE),$(IMAGE_BASE)),image-base)
	@mkdir -p $(IMAGE_CACHE)
	$(BUILDAH) bud --isolation chroot --layers --jobs 2 --format docker \
	  --volume $(HOST_CA):/etc/ssl/certs/ca-certificates.crt:ro \
	  --build-arg BASE_IMAGE=$(IMAGE_BASE) --tag $(IMAGE) --iidfile $(IMAGE_CACHE)/image.id .
	@$(BUILDAH) images --format '{{.Name}}:{{.Tag}} {{.Size}}' $(IMAGE)

# PATH and LANG as Debian's and Python's images set them (an image made from a bare tree has
# no environment at all).
image-base: image-debs
	@$(BUILDAH) inspect --type image $(LOCAL_BASE) >/dev/null 2>&1 || { \
	  $(MAKE) --no-print-directory $(IMAGE_CACHE)/bookworm.tar && \
	  printf '%s\n' 'FROM scratch' 'ADD bookworm.tar /' 'CMD ["bash"]' \
	    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' | \
	  $(BUILDAH) bud --quiet --file - --tag $(LOCAL_BASE) $(IMAGE_CACHE); }

$(IMAGE_CACHE)/bookworm.tar:
	@mkdir -p $(IMAGE_CACHE) && $(SUDO) rm -rf $@.root
	$(SUDO) debootstrap --variant=minbase --include=python3,python3-venv bookworm $@.root \
	  $(DEBIAN_MIRROR) >$@.log || { tail -n 20 $@.log; exit 1; }
	$(SUDO) rm -rf $@.root/var/cache/apt/archives/*.deb $@.root/var/lib/apt/lists/*
	$(SUDO) tar -C $@.root -cf $@.tmp . && mv $@.tmp $@ && $(SUDO) rm -rf $@.root

$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[docs]'
	@touch $@

# --strict (also set in mkdocs.yml) fails on any warning: broken links, anchors, nav entries.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache benchmarks/results var site
	find lbcdn -name '*.so' -delete && rm -f lbcdn/_native.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
