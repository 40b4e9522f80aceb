#!/usr/bin/env bash
# Runs the tests of the Argo CD health checks (tests/argocd/test_health.py): each Lua script in
# deploy/argocd/health/ under a real Lua 5.1 interpreter against the samples in
# deploy/argocd/testdata/.
#
# Installs what it needs into a virtualenv, .venv-argocd/ at the repository root (gitignored;
# $ARGOCD_TEST_VENV overrides the place): pytest, lupa (Lua 5.1 for Python, wheels with the
# interpreter built in) and PyYAML, from PyPI. As root it first apt-installs python3-venv when
# the venv module is missing. Extra arguments go to pytest (e.g. -k Share).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ARGOCD_TEST_VENV:-$PWD/.venv-argocd}
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "==> installing python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "python3's venv module is missing (run: sudo apt-get install python3-venv)" >&2
        exit 1
    fi
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import pytest, lupa.lua51, yaml' >/dev/null 2>&1; then
    echo "==> installing pytest, lupa and PyYAML into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'pytest>=8' 'lupa>=2.0' 'PyYAML>=6'
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/argocd "$@"
