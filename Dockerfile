# lbcdn container image. `make image` builds it with buildah from a Debian bookworm base that
# debootstrap makes (no image registry needed) and tests/deploy/test_image.py runs what it built;
# its steps are the Makefile's (`python3 -m venv`, pip install of this pyproject.toml without
# the test extras, `python -m lbcdn.native build`).
#
#   docker build -t lbcdn:0.1.0 .
#   docker run --rm -p 8080:8080 -e LBCDN_UPSTREAM=app.internal:8000 lbcdn:0.1.0
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/lbcdn/config.yaml:ro" lbcdn:0.1.0
#
# Config: /etc/lbcdn/config.yaml. The image ships deploy/docker/config.yaml there, a config
# driven by environment variables (LBCDN_UPSTREAM is required; see that file); mount your own
# file over it for anything more (several pools, routes, an admin token, the cache, DNS).
# Any config may read variables itself with ${NAME} and ${NAME:-default}.

# Any Debian-based image whose `python3` is 3.11 or newer with venv (`make image` passes its
# debootstrapped bookworm with python3 and python3-venv).
ARG BASE_IMAGE=python:3.11-slim

# Build stage: the venv the image ships, its hot-path modules compiled with mypyc as `make
# native` does (lbcdn/native.py), here so that neither the C compiler nor mypy ship. Python.h:
# the python images have their own; Debian's python3 needs python3-dev (as in the Makefile).
FROM ${BASE_IMAGE} AS native
# pip trusts the system's CAs, not its own copy of them: a build behind a TLS-intercepting
# proxy then works once that file has the proxy's CA (`make image` mounts the host's).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev $(python3 -c 'import os, sysconfig; \
      print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lbcdn/src
# The dependencies first, in a layer of their own that a change to lbcdn/ keeps: the runtime
# ones into the venv the image ships, the build's (the `native` extra: mypy, whose mypyc
# compiles) into a directory of their own that stays in this stage.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
      open("runtime.txt", "w").write("\n".join(p["dependencies"])); \
      open("native.txt", "w").write("\n".join(p["optional-dependencies"]["native"]))' \
 && python3 -m venv /opt/lbcdn/venv \
 && /opt/lbcdn/venv/bin/pip install -r runtime.txt \
 && /opt/lbcdn/venv/bin/pip install --target /opt/lbcdn/native -r native.txt
# Then the package, compiled in place: run from the venv's site-packages, `-m` imports lbcdn
# from there. pyproject.toml names README.md as the long description, which nothing in the
# image reads: an empty one stands in, so that editing the README rebuilds nothing. Nothing
# installs into the venv after that, so pip and setuptools leave it.
COPY lbcdn ./lbcdn
RUN : > README.md \
 && /opt/lbcdn/venv/bin/pip install --no-deps . \
 && cd /opt/lbcdn/venv/lib/python3*/site-packages \
 && PYTHONPATH=/opt/lbcdn/native /opt/lbcdn/venv/bin/python -m lbcdn.native build \
 && /opt/lbcdn/venv/bin/python -m pip uninstall -y -q pip setuptools

FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/lbcdn/venv/bin:$PATH

# tini as PID 1: the kernel gives PID 1 no default signal handlers and makes it reap every
# orphan. lbcdn handles SIGTERM/SIGINT/SIGHUP/SIGUSR1 itself; tini forwards them to it, reaps
# zombies, and exits with lbcdn's exit code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify the user (it cannot for
# a user given by name) and volume ownership (fsGroup) is predictable.
RUN groupadd --system --gid 10001 lbcdn \
 && useradd --system --uid 10001 --gid lbcdn --home-dir /var/lib/lbcdn \
            --shell /usr/sbin/nologin lbcdn \
 && install -d -o lbcdn -g lbcdn -m 0750 /var/lib/lbcdn \
 && install -d -m 0755 /etc/lbcdn

# The venv as built (its python is the base's, at the same path in both stages). The build
# fails unless every hot-path module in it is compiled from its current source.
COPY --from=native /opt/lbcdn/venv /opt/lbcdn/venv
# (status exits 1 on a stale module; its first line says how much is compiled)
RUN lbcdn --version \
 && python3 -m lbcdn.native status > /tmp/native-status \
 && head -n 1 /tmp/native-status | grep -qx 'lbcdn hot path: compiled' \
 && rm /tmp/native-status

# The built-in, environment-driven config; mounting a file (or a ConfigMap) here replaces it.
COPY deploy/docker/config.yaml /etc/lbcdn/config.yaml

# Relative paths in the config (cache, state) land in the lbcdn user's writable directory,
# which is also the one to mount a volume on. Nothing else is written, so the container
# runs with a read-only root filesystem (give it a tmpfs /tmp).
WORKDIR /var/lib/lbcdn
USER 10001:10001

# 8080: HTTP listener; 9901: admin API (/healthz, /metrics); 5353: DNS (UDP and TCP; a
# non-root user cannot bind 53, so publish 53 -> 5353). The config decides what listens.
EXPOSE 8080/tcp 9901/tcp 5353/udp 5353/tcp

# GET /healthz of the admin API that the config in use sets up (its address and port, which a
# mounted config or LBCDN_ADMIN_PORT may change); a config of your own at another path needs
# `--health-cmd "lbcdn healthcheck --config PATH"`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["lbcdn", "healthcheck", "--config", "/etc/lbcdn/config.yaml"]

# SIGTERM: /healthz turns 503, listeners stop accepting, in-flight requests drain for up to
# shutdown.drain_timeout_s, exit 0. Give `docker stop -t` / stop_grace_period /
# terminationGracePeriodSeconds more than that. SIGHUP: reload the config; SIGUSR1: reopen logs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "lbcdn"]
CMD ["serve", "--config", "/etc/lbcdn/config.yaml"]
