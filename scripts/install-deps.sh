#!/usr/bin/env bash
# Install what a fresh Debian machine lacks for DS01: the real components and a virtual environment.
# Idempotent: packages already present are not reinstalled; the venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
# The test image needs a statically linked busybox (a dynamic one cannot run in an empty image).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# The cluster store's tests (and `ds01 up --nodes N`) start a private PostgreSQL from Debian's
# package; psycopg (pure Python) loads Debian's libpq5, which the server package pulls in.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
dpkg -s libpq5 >/dev/null 2>&1 || need+=(libpq5)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || need+=(make)
# Real clients for the gateway's compatibility matrix (tests/gateway): compose 1.29, and Node
# for the Dev Containers CLI; runuser/script (util-linux, bsdutils) are part of every Debian.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root, or install them with apt-get)" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services from starting: DS01 starts its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Dev Containers CLI, pinned: 0.83.0 is the newest that runs on Debian 12's Node 18. Installed
# globally (not under the checkout) so the matrix's unprivileged users can run it.
DEVCONTAINER_CLI=0.83.0
if [ "$(devcontainer --version 2>/dev/null)" != "$DEVCONTAINER_CLI" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: devcontainer $DEVCONTAINER_CLI (run as root, or npm install -g @devcontainers/cli@$DEVCONTAINER_CLI)" >&2
    exit 1
  fi
  echo "installing: @devcontainers/cli@$DEVCONTAINER_CLI"
  npm install --global --no-audit --no-fund --loglevel=error "@devcontainers/cli@$DEVCONTAINER_CLI" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
