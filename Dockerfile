# lbcdn container image. No Docker engine runs on our dev or CI machines, so this file is not
# built there (tests/deploy/test_docker.py checks its text and runs its built-in config): keep
# its steps the same as the Makefile's (`python3 -m venv`, then pip install of this
# pyproject.toml; here without the test extras and not editable).
#
#   docker build -t lbcdn:0.1.0 .
#   docker run --rm -p 8080:8080 -e LBCDN_UPSTREAM=app.internal:8000 lbcdn:0.1.0
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/lbcdn/config.yaml:ro" lbcdn:0.1.0
#
# Config: /etc/lbcdn/config.yaml. The image ships deploy/docker/config.yaml there, a config
# driven by environment variables (LBCDN_UPSTREAM is required; see that file); mount your own
# file over it for anything more (several pools, routes, an admin token, the cache, DNS).
# Any config may read variables itself with ${NAME} and ${NAME:-default}.

# Build stage: the hot-path modules compiled with mypyc, as `make native` does (lbcdn/native.py),
# here so that neither the C compiler nor mypy ship in the image.
FROM python:3.11-slim AS native
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lbcdn/src
COPY pyproject.toml README.md ./
COPY lbcdn ./lbcdn
RUN python3 -m venv /opt/lbcdn/venv \
 && /opt/lbcdn/venv/bin/pip install '.[native]' \
 && /opt/lbcdn/venv/bin/python -m lbcdn.native build

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lbcdn/venv/bin:$PATH

# tini as PID 1: the kernel gives PID 1 no default signal handlers and makes it reap every
# orphan. lbcdn handles SIGTERM/SIGINT/SIGHUP/SIGUSR1 itself; tini forwards them to it, reaps
# zombies, and exits with lbcdn's exit code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify the user (it cannot for
# a user given by name) and volume ownership (fsGroup) is predictable.
RUN groupadd --system --gid 10001 lbcdn \
 && useradd --system --uid 10001 --gid lbcdn --home-dir /var/lib/lbcdn \
            --shell /usr/sbin/nologin lbcdn \
 && install -d -o lbcdn -g lbcdn -m 0750 /var/lib/lbcdn \
 && install -d -m 0755 /etc/lbcdn

# Same as `make install`: a venv, then pip install of the project (README.md is named by
# pyproject.toml, so it is needed to build).
WORKDIR /opt/lbcdn/src
COPY pyproject.toml README.md ./
COPY lbcdn ./lbcdn
RUN python3 -m venv /opt/lbcdn/venv \
 && /opt/lbcdn/venv/bin/pip install . \
 && rm -rf /opt/lbcdn/src
# The same package, compiled; `lbcdn --version` says "hot path compiled".
COPY --from=native /opt/lbcdn/venv/lib/python3.11/site-packages/lbcdn \
     /opt/lbcdn/venv/lib/python3.11/site-packages/lbcdn
RUN lbcdn --version

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

# The slim image has no curl: ask the admin health endpoint with Python's stdlib.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2); sys.exit(0 if r.status == 200 else 1)"]

# SIGTERM: /healthz turns 503, listeners stop accepting, in-flight requests drain for up to
# shutdown.drain_timeout_s, exit 0. Give `docker stop -t` / stop_grace_period /
# terminationGracePeriodSeconds more than that. SIGHUP: reload the config; SIGUSR1: reopen logs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "lbcdn"]
CMD ["serve", "--config", "/etc/lbcdn/config.yaml"]
