#!/usr/bin/env bash
# Tests of the Helm chart, the kustomize install and the Dockerfile (tests/chart).
#
# Installs pinned tools from PyPI into .venv-chart (gitignored) on first use:
#   helm-python-sdk   Helm v4's Go SDK as a shared library (no helm binary, nothing fetched
#                     outside PyPI): lint, render, values-schema validation
#   kubernetes-validate  Kubernetes OpenAPI schemas, to validate every rendered object
#   pytest, pyyaml
#   checkov           security scan; in its own venv (.venv-chart/checkov): it pins
#                     packaging<24, which pytest 9 cannot share
# kubectl (for `kubectl kustomize`) is used when on PATH; without it that test skips, saying so.
#
# Usage: scripts/test-chart.sh [pytest args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-chart"
say() { echo "==> $*" >&2; }
die() { echo "test-chart: $*" >&2; exit 1; }

TOOLS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pytest==9.2.0 pyyaml==6.0.3)
CHECKOV=(checkov==3.3.30)

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "python3 not found (needs 3.11 or newer, with venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$($python --version) is too old: tests/chart needs Python 3.11+ (tomllib)"

# install VENV STAMP PACKAGES...: creates the venv and installs the packages unless the stamp
# says these exact pins are installed already.
install() {
    local dir=$1 stamp=$1/.installed; shift
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then return 0; fi
    say "installing $* into ${dir#"$root"/}"
    if [ ! -x "$dir/bin/python" ]; then
        "$python" -m venv "$dir" || die "cannot create a venv at $dir (Debian: apt-get install python3-venv)"
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        || die "cannot install $* from PyPI into $dir (see pip's message above)"
    echo "$*" > "$stamp"
}
install "$venv" "${TOOLS[@]}"
install "$venv/checkov" "${CHECKOV[@]}"

"$venv/bin/python" -c 'import helm_python, kubernetes_validate, pytest, yaml' \
    || die "the tools in $venv do not import; delete $venv and rerun"
"$venv/checkov/bin/checkov" --version >/dev/null || die "checkov in $venv/checkov does not run"
command -v kubectl >/dev/null || say "kubectl not on PATH: the kustomize build test will be skipped"

cd "$root/tests/chart"
export CHECKOV="$venv/checkov/bin/checkov"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs "$@"
