"""The Argo CD health checks of deploy/argocd/health/, run by a real Lua 5.1 interpreter (the
language gopher-lua, Argo CD's interpreter, implements) against the statuses the operator's
planners write (deploy/argocd/testdata/<Kind>.json; the operator's tests/argocd_fixtures.rs
checks that each status there is one its status types read and write back unchanged).

Run with scripts/test-argocd.sh, which installs pytest, lupa and PyYAML into a virtualenv.
"""

import json
import pathlib
import re
import subprocess

import pytest
import yaml
from lupa import lua51

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEALTH = ROOT / "deploy" / "argocd" / "health"
TESTDATA = ROOT / "deploy" / "argocd" / "testdata"
README = ROOT / "deploy" / "argocd" / "README.md"
KINDS = ["Workspace", "Snapshot", "Share", "LifecyclePolicy", "EventSink", "Preload", "MediaDataStore"]
# Argo CD's health statuses (gitops-engine health.HealthStatusCode).
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(kind, obj):
    """Runs the health check of `kind` on `obj` as Argo CD does: `obj` is a global table and
    the chunk returns a table with status and message."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((HEALTH / f"{kind}.lua").read_text())
    assert result is not None, f"{kind}.lua returned nothing"
    return {"status": result["status"], "message": result["message"]}


def cases(kind):
    return json.loads((TESTDATA / f"{kind}.json").read_text())


ALL_CASES = [
    pytest.param(kind, c, id=f"{kind}: {c['case']}") for kind in KINDS for c in cases(kind)
]


@pytest.mark.parametrize("kind,case", ALL_CASES)
def test_health_of_a_status_the_operator_writes(kind, case):
    assert case["object"]["kind"] == kind
    got = health(kind, case["object"])
    assert got["status"] in STATUSES
    assert got["status"] == case["expect"], got
    assert case["messageContains"] in (got["message"] or ""), got


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_healthy_progressing_and_degraded_samples(kind):
    expected = {c["expect"] for c in cases(kind)}
    want = {"Healthy", "Progressing", "Degraded"}
    if kind == "LifecyclePolicy":
        want.add("Suspended")
    assert want <= expected, f"{kind} samples cover only {sorted(expected)}"


def common(kind):
    text = (HEALTH / f"{kind}.lua").read_text()
    found = re.search(r"^-- BEGIN common.*?^-- END common$", text, re.S | re.M)
    assert found, f"{kind}.lua has no common block"
    return found.group(0)


def test_the_common_block_is_the_same_in_every_script():
    first = common(KINDS[0])
    for kind in KINDS[1:]:
        assert common(kind) == first, f"{kind}.lua's common block differs from {KINDS[0]}.lua's"


def test_scripts_use_no_lua_5_2_or_later_syntax():
    # gopher-lua implements Lua 5.1: no goto/labels, integer division or bitwise operators.
    for kind in KINDS:
        code = "\n".join(
            line.split("--", 1)[0] for line in (HEALTH / f"{kind}.lua").read_text().splitlines()
        )
        for token in ["goto ", "::", "//", "<<", ">>", " & ", " | "]:
            assert token not in code, f"{kind}.lua uses {token!r}"


def test_a_missing_generation_does_not_break_a_script():
    # Objects from older API servers or hand-written fixtures may lack metadata.generation.
    for kind in KINDS:
        obj = cases(kind)[-1]["object"]
        bare = dict(obj, metadata={"name": obj["metadata"]["name"]})
        assert health(kind, bare)["status"] in STATUSES


def readme_recipe():
    text = README.read_text()
    found = re.search(r"<!-- argocd-cm recipe -->\n```sh\n(.*?)```", text, re.S)
    assert found, "deploy/argocd/README.md has no argocd-cm recipe block"
    return found.group(1)


def test_the_readme_recipe_builds_an_argocd_cm_with_each_script(tmp_path):
    # The recipe runs from the repository root; here it writes into tmp_path and the kubectl
    # step only prints.
    out = tmp_path / "argocd-cm-studiodrive.yaml"
    script = readme_recipe().replace("argocd-cm-studiodrive.yaml", str(out)).replace("kubectl ", "echo kubectl ")
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, check=True)
    data = yaml.safe_load(out.read_text())["data"]
    assert len(data) == len(KINDS), sorted(data)
    for kind in KINDS:
        key = f"resource.customizations.health.studiodrive.dev_{kind}"
        assert data[key] == (HEALTH / f"{kind}.lua").read_text(), key
