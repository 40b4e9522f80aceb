#!/usr/bin/env bash
# Checks the Helm chart's alert rules and dashboards with promtool:
#   1. charts/studiodrive/files/prometheus-rules.yaml is valid (promtool check rules);
#   2. every query of every dashboard in charts/studiodrive/files/dashboards/ is valid PromQL
#      (each is checked as the expression of a recording rule, $__rate_interval as 5m);
#   3. the alerts fire, and stay quiet, as tests/prometheus/rules_test.yaml says
#      (promtool test rules).
# That the queried metrics exist is checked by the Rust test in csi-driver/src/metrics.rs.
#
# Installs promtool when missing (as root: Debian's `prometheus` package, no service started).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "==> installing promtool (Debian package prometheus)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "promtool is missing (run: sudo apt-get install prometheus)" >&2
        exit 1
    fi
fi

promtool check rules charts/studiodrive/files/prometheus-rules.yaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/dashboards.rules.yaml" charts/studiodrive/files/dashboards/*.json <<'EOF'
import json
import sys

out, dashboards = sys.argv[1], sys.argv[2:]
rules = []


def exprs(value):
    if isinstance(value, dict):
        if isinstance(value.get("expr"), str):
            yield value["expr"]
        for v in value.values():
            yield from exprs(v)
    elif isinstance(value, list):
        for v in value:
            yield from exprs(v)


for path in dashboards:
    with open(path) as f:
        for expr in exprs(json.load(f)):
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr.replace("$__rate_interval", "5m")})
assert rules, "no dashboard queries found"
with open(out, "w") as f:
    # JSON is YAML: promtool reads it as a rule file.
    json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
print(f"{len(rules)} dashboard queries from {len(dashboards)} dashboards")
EOF
promtool check rules "$work/dashboards.rules.yaml"

promtool test rules tests/prometheus/rules_test.yaml
