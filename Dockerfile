# lbcdn container image. No Docker engine runs on our dev or CI machines, so this file is not
# built there: keep its steps the same as the Makefile's (`python3 -m venv`, then pip install of
# this pyproject.toml; here without the test extras and not editable).
#
#   docker build -t lbcdn .
#   docker run --rm -p 8080:8080 -p 9901:9901 -v "$PWD/my.yaml:/etc/lbcdn/config.yaml:ro" lbcdn
#
# The config is read from /etc/lbcdn/config.yaml (mount it; the image holds none). Inside a
# container the config must bind its listener to 0.0.0.0:8080 and the admin API to 0.0.0.0:9901
# for the published ports and the HEALTHCHECK below to reach them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lbcdn/venv/bin:$PATH

RUN groupadd --system lbcdn \
 && useradd --system --gid lbcdn --home-dir /var/lib/lbcdn --shell /usr/sbin/nologin lbcdn \
 && install -d -o lbcdn -g lbcdn -m 0750 /var/lib/lbcdn \
 && install -d -m 0755 /etc/lbcdn

# Same as `make install`: a venv, then pip install of the project (README.md is named by
# pyproject.toml, so it is needed to build).
WORKDIR /opt/lbcdn/src
COPY pyproject.toml README.md ./
COPY lbcdn ./lbcdn
RUN python3 -m venv /opt/lbcdn/venv \
 && /opt/lbcdn/venv/bin/pip install . \
 && lbcdn --version \
 && rm -rf /opt/lbcdn/src

# Relative paths in the config (cache, state) land in the lbcdn user's writable directory.
WORKDIR /var/lib/lbcdn
USER lbcdn

# 8080: HTTP listener; 9901: admin API (/healthz, /metrics). The config decides what listens.
EXPOSE 8080 9901

# The slim image has no curl: ask the admin health endpoint with Python's stdlib.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2); sys.exit(0 if r.status == 200 else 1)"]

# SIGTERM: stop accepting, drain in-flight requests up to shutdown.drain_timeout_s, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lbcdn"]
CMD ["serve", "--config", "/etc/lbcdn/config.yaml"]
