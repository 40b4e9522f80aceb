#!/usr/bin/env bash
# Regenerates config/default (the kustomize install) from the chart's default render.
# Uses the venv scripts/test-chart.sh creates (.venv-chart); run that once first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv-chart/bin/python"
[ -x "$py" ] || { echo "gen-kustomize: $py missing: run scripts/test-chart.sh once (it creates the venv)" >&2; exit 1; }
exec "$py" "$root/tests/chart/chartlib.py" gen-kustomize
