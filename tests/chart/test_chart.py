"""Tests of the Helm chart (charts/studiodrive), the kustomize install (config/default) and
the Dockerfile. Run by scripts/test-chart.sh, which installs the pinned tools.

Rendering is offline (helm-python-sdk: Helm's Go SDK in a shared library); rendered objects
are validated against the Kubernetes OpenAPI schemas of kubernetes-validate's newest release;
checkov scans the default render. No cluster is needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import chartlib
from chartlib import CHART, NAMESPACE, ROOT, containers, find, key, pod_spec, render, workloads

helm = chartlib.helm()

CARGO = tomllib.loads((ROOT / "Cargo.toml").read_text())
APP_VERSION = CARGO["workspace"]["package"]["version"]
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
DRIVER = "csi.studiodrive.dev"
IMAGE_REPO = "ghcr.io/studiodrive/studiodrive"
FIXTURES = Path(__file__).parent / "fixtures"

# Value combinations every test that renders runs over (name -> values).
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "s3-endpoint-credentials": {
        "objectStore": {"type": "s3", "s3": {
            "bucket": "frames", "prefix": "/studio-a/", "endpoint": "http://minio.storage:9000",
            "region": "eu-west-1", "credentialsSecret": "studiodrive-s3"}},
    },
    "file-store-claim": {"objectStore": {"type": "file", "file": {"existingClaim": "studiodrive-blocks"}}},
    "file-store-hostpath": {"objectStore": {"type": "file", "file": {"hostPath": "/mnt/blocks"}}},
    "encryption-namespaces": {"encryption": {"enabled": True, "keySecretNamespaces": ["studio-a", "studio-b"]}},
    "encryption-off": {"encryption": {"enabled": False}},
    "encryption-and-relay-off": {"encryption": {"enabled": False}, "relay": {"enabled": False}},
    "relay-only-namespaces": {"encryption": {"enabled": False, "keySecretNamespaces": ["studio-a"]}},
    "metrics-off": {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
    "metrics-on-monitoring": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True},
                                          "prometheusRule": {"enabled": True},
                                          "grafanaDashboards": {"enabled": True}}},
    "everything-optional": {
        "volumeSnapshotClass": {"create": True, "isDefault": True},
        "storageClass": {"isDefault": True, "nodePublishSecret": {"name": "kek"}},
        "metadata": {"tls": True, "caSecret": "db-ca"},
        "node": {"maxCacheSize": 21474836480, "updateStrategy": {"type": "OnDelete"}},
    },
    "no-resizer": {"sidecars": {"resizer": {"enabled": False}}},
    "no-optional": {
        "sidecars": {"snapshotter": {"enabled": False}, "resizer": {"enabled": False}},
        "storageClass": {"create": False},
        "operator": {"podDisruptionBudget": {"enabled": False}},
    },
    "relay-off": {"relay": {"enabled": False}},
    "relay-single-tuned": {"relay": {"replicas": 1, "leaseSeconds": 60, "pollMs": 500, "maxBackoffMs": 60000,
                                     "logLevel": "drive=debug,info", "priorityClassName": "events"},
                           "metrics": {"relayPort": 9911, "serviceMonitor": {"enabled": True}}},
    "metadata-custom": {"metadata": {"existingSecret": "cockroach-dsn", "secretKey": "dsn",
                                     "statementTimeoutMs": 5000, "tls": True, "caSecret": "cockroach-ca"}},
    "sink-key-existing": {"events": {"sinkSecretsKey": {"existingSecret": "studio-sink-key", "key": "sealing-key"}},
                          "metadata": {"tls": True, "caSecret": "db-ca"}},
    "preload-resources": {"operator": {"preload": {"cpuRequest": "250m", "memoryRequest": "1Gi",
                                                   "memoryLimit": "2Gi"}}},
    "api-off": {"api": {"enabled": False}},
    "api-plain": {"api": {"tls": {"mode": "plain"}}},
    "api-plain-s3-credentials": {"api": {"tls": {"mode": "plain"}},
                                 "objectStore": {"s3": {"credentialsSecret": "studiodrive-s3", "credentialsKey": "aws"}}},
    "api-cert-manager": {"api": {"tls": {"mode": "certManager", "extraDnsNames": ["api.studio.example", "*.api.studio.example"],
                                         "issuerRef": {"name": "studio-ca", "kind": "ClusterIssuer"}}}},
    "api-existing-secret": {"api": {"tls": {"mode": "existingSecret", "secretName": "studio-api-cert"}}},
    "api-single-tuned": {"api": {"replicas": 1, "audience": "render-farm", "logLevel": "drive_csi=debug,info",
                                 "priorityClassName": "api", "tls": {"clusterDomain": "studio.internal",
                                                                      "validityDays": 365}}},
    "api-large-documents-metrics": {"api": {"maxDocumentBytes": 536870912, "terminationGracePeriodSeconds": 45,
                                            "resources": {"requests": {"cpu": "20m", "memory": "64Mi"},
                                                          "limits": {"memory": "13Gi"}}},
                                    "metrics": {"apiPort": 9999, "serviceMonitor": {"enabled": True}}},
}


@pytest.fixture(scope="session")
def monitoring_chart(tmp_path_factory) -> Path:
    """The chart with files/ as shipped, or, where the rules or dashboards are missing,
    with the test fixtures in their place (the content of files/** is written separately)."""
    dest = tmp_path_factory.mktemp("chart") / "studiodrive"
    shutil.copytree(CHART, dest)
    files = dest / "files"
    files.mkdir(exist_ok=True)
    if not (files / "prometheus-rules.yaml").exists():
        shutil.copy(FIXTURES / "prometheus-rules.yaml", files / "prometheus-rules.yaml")
    if not list((files / "dashboards").glob("*.json")):
        (files / "dashboards").mkdir(parents=True, exist_ok=True)
        for p in (FIXTURES / "dashboards").glob("*.json"):
            shutil.copy(p, files / "dashboards" / p.name)
    return dest


def render_combo(name: str, monitoring_chart: Path) -> list[dict[str, Any]]:
    path = monitoring_chart if name == "metrics-on-monitoring" else CHART
    return render(COMBOS[name], chart_path=path)


@pytest.fixture(scope="session")
def default_objects() -> list[dict[str, Any]]:
    return render()


# ---- chart metadata ------------------------------------------------------------------------

def test_app_version_is_the_workspace_version():
    assert CHART_META["appVersion"] == APP_VERSION, (CHART_META["appVersion"], APP_VERSION)
    assert CHART_META["version"] == APP_VERSION, "the chart version follows the workspace version (Chart.yaml)"
    assert CHART_META["apiVersion"] == "v2"


@pytest.mark.parametrize("combo", ["defaults", "s3-endpoint-credentials", "file-store-claim", "everything-optional",
                                   "api-plain", "api-cert-manager", "api-existing-secret", "api-plain-s3-credentials"])
def test_helm_lint_strict_is_clean(combo):
    report = helm.lint(str(CHART), COMBOS[combo] or None, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert report["total_charts_linted"] == 1
    assert not problems, problems


# ---- rendering and schema validation -------------------------------------------------------

# Kinds whose schemas are CRDs, not Kubernetes: checked here by hand instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec",),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("spec",),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): ("driver", "deletionPolicy"),
    ("cert-manager.io/v1", "Certificate"): ("spec",),
}


def validate_object(obj: dict[str, Any], version: str) -> None:
    custom = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        assert obj["metadata"].get("name"), obj
        for field in custom:
            assert obj.get(field), f"{key(obj)} lacks {field}"
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{key(obj)} is not a valid {obj['apiVersion']} {obj['kind']} for Kubernetes {version}: "
                    f"{e.message} at {list(e.path)}")
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{key(obj)}: Kubernetes {version} has no schema for {obj['apiVersion']} {obj['kind']}")


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_rendered_object_validates_against_kubernetes_schemas(combo, monitoring_chart):
    version = kubernetes_validate.latest_version()
    objects = render_combo(combo, monitoring_chart)
    assert len(objects) > 15
    for obj in objects:
        validate_object(obj, version)
    names = [(*key(o), o["metadata"].get("namespace")) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"


def test_chart_crds_validate_against_kubernetes_schemas():
    version = kubernetes_validate.latest_version()
    crds = chartlib.crd_objects()
    assert {c["spec"]["names"]["plural"] for c in crds} == {"workspaces", "snapshots", "shares", "lifecyclepolicies", "eventsinks",
                                                            "preloads", "mediadatastores"}
    for crd in crds:
        assert crd["spec"]["group"] == "studiodrive.dev"
        validate_object(crd, version)


# ---- values.schema.json --------------------------------------------------------------------

BAD_VALUES = [
    ({"operatr": {}}, "operatr"),
    ({"operator": {"replica": 2}}, "replica"),
    ({"node": {"cacheSize": "10Gi"}}, "cacheSize"),
    ({"node": {"kubeletDir": "var/lib/kubelet"}}, "kubeletDir"),
    ({"objectStore": {"type": "gcs"}}, "type"),
    ({"objectStore": {"s3": {"bucket": "b", "secretKey": "x"}}}, "secretKey"),
    ({"metrics": {"enabled": "yes"}}, "enabled"),
    ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
    ({"sidecars": {"provisioner": {"image": "registry.k8s.io/sig-storage/csi-provisioner"}}}, "image"),
    ({"sidecars": {"livenessProbe": {"resources": {"requests": {"cpu": "10m", "memory": None}}}}}, "memory"),
    ({"csiDriver": {"fsGroupPolicy": "Always"}}, "fsGroupPolicy"),
    ({"storageClass": {"parameters": {"worksapce": "x"}}}, "worksapce"),
    ({"encryption": {"keySecretNamespaces": "studio-a"}}, "keySecretNamespaces"),
    ({"image": {"tag": "0.1.0 "}}, "tag"),
    ({"relay": {"replicas": -1}}, "replicas"),
    ({"relay": {"replicas": "2"}}, "replicas"),
    ({"relay": {"enabled": "yes"}}, "enabled"),
    ({"relay": {"leaseSeconds": 1}}, "leaseSeconds"),
    ({"relay": {"pollMs": 0}}, "pollMs"),
    ({"relay": {"maxBackoffMs": 600001}}, "maxBackoffMs"),
    ({"relay": {"metricsAddr": "0.0.0.0:9810"}}, "metricsAddr"),
    ({"relay": {"resources": {"requests": {"cpu": "20m", "memory": None}}}}, "memory"),
    ({"metrics": {"relayPort": 70000}}, "relayPort"),
    ({"operator": {"preload": {"cpuRequest": "100 m"}}}, "cpuRequest"),
    ({"operator": {"preload": {"memoryLimit": 536870912}}}, "memoryLimit"),
    ({"operator": {"preload": {"memoryRequest": "128MB"}}}, "memoryRequest"),
    ({"operator": {"preload": {"cpuLimit": "1"}}}, "cpuLimit"),
    ({"events": {"sinkSecretsKey": {"existingSecret": "k", "secretKey": "key"}}}, "secretKey"),
    ({"events": {"sinkSecretsKey": {"key": "a/b"}}}, "key"),
    ({"events": {"sinkSecretKey": {}}}, "sinkSecretKey"),
    ({"api": {"tls": {"mode": "selfSigned"}}}, "mode"),
    ({"api": {"tls": {"mode": "Plain"}}}, "mode"),
    ({"api": {"tls": {"cert": "x"}}}, "cert"),
    ({"api": {"tls": {"issuerRef": {"name": "ca", "namespace": "cert-manager"}}}}, "namespace"),
    ({"api": {"tls": {"validityDays": 0}}}, "validityDays"),
    ({"api": {"tls": {"extraDnsNames": ["https://api.example"]}}}, "extraDnsNames"),
    ({"api": {"tls": {"secretName": "Studio_Cert"}}}, "secretName"),
    ({"api": {"replicas": 0}}, "replicas"),
    ({"api": {"audience": ""}}, "audience"),
    ({"api": {"listen": "0.0.0.0:8443"}}, "listen"),
    ({"api": {"resources": {"requests": {"cpu": "20m", "memory": None}}}}, "memory"),
    ({"api": {"maxDocumentBytes": 536870913}}, "maxDocumentBytes"),
    ({"api": {"maxDocumentBytes": 0}}, "maxDocumentBytes"),
    ({"api": {"maxDocumentBytes": "200Mi"}}, "maxDocumentBytes"),
    ({"api": {"terminationGracePeriodSeconds": 25}}, "terminationGracePeriodSeconds"),
    ({"metrics": {"apiPort": 0}}, "apiPort"),
]


@pytest.mark.parametrize("values,needle", BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_values_schema_rejects_bad_values(values, needle):
    chart = chartlib.load_chart()
    try:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
    finally:
        chart.close()
    assert needle in str(err.value), str(err.value)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_values_schema_accepts_every_combo():
    chart = chartlib.load_chart()
    try:
        for values in COMBOS.values():
            chart.validate_schema(values)
    finally:
        chart.close()


@pytest.mark.parametrize("values,needle", [
    ({"objectStore": {"type": "file"}}, "existingClaim or objectStore.file.hostPath"),
    ({"objectStore": {"type": "file", "file": {"existingClaim": "a", "hostPath": "/b"}}}, "only one"),
    ({"objectStore": {"s3": {"bucket": ""}}}, "bucket is required"),
    ({"api": {"tls": {"mode": "certManager"}}}, "api.tls.issuerRef.name"),
    ({"api": {"tls": {"mode": "existingSecret"}}}, "api.tls.secretName"),
])
def test_inconsistent_values_fail_the_render(values, needle):
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert needle in str(err.value)


# ---- the CSI driver ------------------------------------------------------------------------

def test_driver_name_and_audience_match_the_csi_source(default_objects):
    source = (ROOT / "csi-driver/src/csi/mod.rs").read_text()
    assert f'pub const DRIVER_NAME: &str = "{DRIVER}";' in source
    serve = (ROOT / "csi-driver/src/cli/serve.rs").read_text()
    audience = re.search(r'DEFAULT_TOKEN_AUDIENCE: &str = "([^"]+)"', serve).group(1)
    driver = find(default_objects, "CSIDriver")
    assert driver["metadata"]["name"] == DRIVER
    assert driver["spec"]["tokenRequests"][0]["audience"] == audience
    assert find(default_objects, "StorageClass")["provisioner"] == DRIVER


def test_csidriver_fields(default_objects):
    spec = find(default_objects, "CSIDriver", DRIVER)["spec"]
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is True
    assert spec["requiresRepublish"] is True
    assert spec["tokenRequests"] == [{"audience": DRIVER, "expirationSeconds": 3600}]
    assert spec["volumeLifecycleModes"] == ["Persistent", "Ephemeral"]
    assert spec["fsGroupPolicy"] == "None"


def volume_named(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (vol,) = [v for v in spec["volumes"] if v["name"] == name]
    return vol


def test_node_plugin_is_privileged_with_bidirectional_kubelet_mount(default_objects):
    ds = find(default_objects, "DaemonSet", "studiodrive-csi-node")
    spec = pod_spec(ds)
    plugin = next(c for c in spec["containers"] if c["name"] == "csi-plugin")
    assert plugin["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    assert mounts["kubelet-dir"]["mountPath"] == "/var/lib/kubelet"
    assert mounts["kubelet-dir"]["mountPropagation"] == "Bidirectional"
    # Only the kubelet directory propagates mounts, and only from the plugin.
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert (c["name"], m["name"]) == ("csi-plugin", "kubelet-dir")
    assert volume_named(spec, "kubelet-dir")["hostPath"]["path"] == "/var/lib/kubelet"
    assert volume_named(spec, "dev-fuse")["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mounts["dev-fuse"]["mountPath"] == "/dev/fuse"
    assert volume_named(spec, "cache-dir")["hostPath"]["path"] == "/var/cache/studiodrive"
    assert "--cache-dir=/var/cache/studiodrive" in plugin["args"]
    assert volume_named(spec, "socket-dir")["hostPath"]["path"] == f"/var/lib/kubelet/plugins/{DRIVER}"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert plugin["args"][:4] == ["--log-json", "serve", "--mode=node", "--endpoint=unix:///csi/csi.sock"]
    assert "--authorization=kubernetes" in plugin["args"]


def test_node_update_strategy_rolls_one_node_or_waits_for_deletion(default_objects, monitoring_chart):
    ds = find(default_objects, "DaemonSet", "studiodrive-csi-node")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    ds = find(render_combo("everything-optional", monitoring_chart), "DaemonSet", "studiodrive-csi-node")
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_node_sidecars_register_the_driver_and_probe_it(default_objects):
    spec = pod_spec(find(default_objects, "DaemonSet", "studiodrive-csi-node"))
    names = [c["name"] for c in spec["containers"]]
    assert names == ["csi-plugin", "node-driver-registrar", "liveness-probe"]
    registrar = spec["containers"][1]
    assert f"--kubelet-registration-path=/var/lib/kubelet/plugins/{DRIVER}/csi.sock" in registrar["args"]
    assert {"name": "registration-dir", "mountPath": "/registration"} in registrar["volumeMounts"]
    assert volume_named(spec, "registration-dir")["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    for sidecar in spec["containers"][1:]:
        assert sidecar["securityContext"].get("privileged") is not True
        assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_controller_runs_controller_mode_with_sidecars(default_objects, monitoring_chart):
    dep = find(default_objects, "Deployment", "studiodrive-csi-controller")
    spec = pod_spec(dep)
    names = [c["name"] for c in spec["containers"]]
    assert names == ["csi-plugin", "csi-provisioner", "csi-snapshotter", "csi-resizer", "liveness-probe"]
    plugin = spec["containers"][0]
    assert "--mode=controller" in plugin["args"] and "serve" in plugin["args"]
    assert plugin["securityContext"]["runAsNonRoot"] is True
    # The state dir is a folder below the emptyDir: the non-root plugin chmods it 0700.
    assert "--state-dir=/var/lib/studiodrive/state" in plugin["args"]
    assert {"name": "state", "mountPath": "/var/lib/studiodrive"} in plugin["volumeMounts"]
    provisioner = spec["containers"][1]
    assert "--extra-create-metadata" in provisioner["args"]  # authorization by claim namespace
    assert "--leader-election" in provisioner["args"]
    everything = render_combo("everything-optional", monitoring_chart)
    names = [c["name"] for c in containers(find(everything, "Deployment", "studiodrive-csi-controller"))]
    assert "csi-resizer" in names
    nothing = render_combo("no-optional", monitoring_chart)
    names = [c["name"] for c in containers(find(nothing, "Deployment", "studiodrive-csi-controller"))]
    assert names == ["csi-plugin", "csi-provisioner", "liveness-probe"]
    assert find(everything, "StorageClass")["allowVolumeExpansion"] is True
    no_resizer = render_combo("no-resizer", monitoring_chart)
    assert find(no_resizer, "StorageClass")["allowVolumeExpansion"] is False


# ---- operator ------------------------------------------------------------------------------

def test_operator_runs_two_replicas_with_leader_election_and_a_pdb(default_objects):
    main = (ROOT / "operator/src/main.rs").read_text()
    assert "run_with_leader_election" in main  # two replicas are only safe with election
    dep = find(default_objects, "Deployment", "studiodrive-operator")
    assert dep["spec"]["replicas"] == 2
    op = pod_spec(dep)["containers"][0]
    env = {e["name"]: e for e in op["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["STUDIODRIVE_METADATA_URL"]["valueFrom"]["secretKeyRef"] == {"name": "studiodrive-metadata", "key": "url"}
    assert op["args"][0] == "run"
    assert f"--gc-image={IMAGE_REPO}:{APP_VERSION}" in op["args"]
    assert "--gc-metadata-secret=studiodrive-metadata/url" in op["args"]
    assert op["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert op["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pdb = find(default_objects, "PodDisruptionBudget", "studiodrive-operator")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("combo", ["defaults", "everything-optional"])
def test_operator_passes_the_node_plugin_image_and_cache_settings_for_preload_jobs(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    args = operator_args(objects)
    plugin = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]
    # Preload Jobs run the node plugin's studiodrive-csi: the same image.
    assert plugin["image"] == f"{IMAGE_REPO}:{APP_VERSION}"
    assert f"--preload-image={plugin['image']}" in args
    # They fill the plugin's host cache directory, with the plugin's cache settings.
    assert "--node-cache-dir=/var/cache/studiodrive" in args
    assert volume_named(pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node")),
                        "cache-dir")["hostPath"]["path"] == "/var/cache/studiodrive"
    for flag in ("cache-size", "cache-min-free"):
        (value,) = [a.split("=", 1)[1] for a in plugin["args"] if a.startswith(f"--{flag}=")]
        assert f"--node-{flag}={value}" in args, (flag, value, args)
    assert "--node-cache-size=10737418240" in args  # an integer, not 1.073741824e+10
    assert "--node-cache-min-free=0.15" in args


def test_preload_flags_follow_the_node_values_and_the_image_override():
    digest = "sha256:" + "cd" * 32
    objects = render({"image": {"digest": digest},
                      "node": {"cacheDir": "/mnt/nvme/studiodrive", "cacheSize": 53687091200, "cacheMinFree": 0.05}})
    args = operator_args(objects)
    assert f"--preload-image={IMAGE_REPO}@{digest}" in args
    assert "--node-cache-dir=/mnt/nvme/studiodrive" in args
    assert "--node-cache-size=53687091200" in args
    assert "--node-cache-min-free=0.05" in args
    spec = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))
    assert volume_named(spec, "cache-dir")["hostPath"]["path"] == "/mnt/nvme/studiodrive"


PRELOAD_FLAGS = ("--preload-cpu-request", "--preload-memory-request", "--preload-memory-limit")


def preload_resource_args(objects) -> list[str]:
    return [a for a in operator_args(objects) if a.startswith(PRELOAD_FLAGS)]


def test_preload_resources_are_the_operators_defaults_by_default(default_objects):
    assert preload_resource_args(default_objects) == [
        "--preload-cpu-request=100m", "--preload-memory-request=128Mi", "--preload-memory-limit=512Mi"]


def test_preload_resources_follow_the_values(monitoring_chart):
    objects = render_combo("preload-resources", monitoring_chart)
    assert preload_resource_args(objects) == [
        "--preload-cpu-request=250m", "--preload-memory-request=1Gi", "--preload-memory-limit=2Gi"]
    # One value alone changes one flag.
    objects = render({"operator": {"preload": {"memoryLimit": "768Mi"}}})
    assert preload_resource_args(objects) == [
        "--preload-cpu-request=100m", "--preload-memory-request=128Mi", "--preload-memory-limit=768Mi"]


def test_gc_service_account_values_say_preload_jobs_use_it():
    lines = (CHART / "values.yaml").read_text().splitlines()
    above = lines[:lines.index("  gc:")]
    comment = []
    while above and above[-1].startswith("  #"):
        comment.insert(0, above.pop()[3:].strip())
    comment = " ".join(comment)
    assert "studiodrive-gc" in comment and "preload Jobs" in comment, comment


def notes(values: dict[str, Any] | None = None) -> str:
    (text,) = [t for path, t in chartlib.render_manifests(values).items() if path.endswith("NOTES.txt")]
    return " ".join(text.split())


def test_notes_say_preload_jobs_need_a_privileged_namespace_and_no_file_store():
    # Preload Jobs mount a hostPath, which Pod Security baseline and restricted refuse.
    source = (ROOT / "operator/src/preload_job.rs").read_text()
    assert "HostPathVolumeSource" in source and "run_as_user: Some(0)" in source
    text = notes()
    assert f"Preload Jobs (one per node a Preload selects) run in namespace {NAMESPACE} as root" in text
    assert "Pod Security level to be privileged" in text
    assert "/var/cache/studiodrive mounted from the host" in text
    assert "no Preload" not in text
    text = notes(COMBOS["file-store-claim"])
    assert "create no LifecyclePolicy and no Preload" in text


def test_gc_service_account_exists_without_a_token(default_objects):
    gc_source = (ROOT / "operator/src/main.rs").read_text()
    assert 'service_account: Some("studiodrive-gc".into())' in gc_source
    sa = find(default_objects, "ServiceAccount", "studiodrive-gc")
    assert sa["automountServiceAccountToken"] is False
    assert not subjects_bound(default_objects, "studiodrive-gc")


def flag_fields(*files: str) -> set[str]:
    """The long flags the clap structs in these files accept (field names, kebab-cased)."""
    fields: set[str] = set()
    for f in files:
        text = (ROOT / f).read_text()
        for m in re.finditer(r"#\[arg\((.*?)\)\]\s*(?:pub\s+)?(\w+)\s*:", text, re.S):
            if re.search(r"\blong\b", m.group(1)):
                fields.add(m.group(2).replace("_", "-"))
    fields.add("log-json")
    return fields


@pytest.mark.parametrize("combo", ["defaults", "everything-optional", "s3-endpoint-credentials", "relay-single-tuned",
                                   "api-plain", "api-single-tuned", "api-large-documents-metrics", "metrics-off"])
def test_every_flag_the_chart_passes_exists_in_the_binaries(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    csi = flag_fields("csi-driver/src/cli/serve.rs", "csi-driver/src/cli/mod.rs", "csi-driver/src/cli/events.rs",
                      "csi-driver/src/cli/api.rs", "csi-driver/src/main.rs")
    operator = flag_fields("operator/src/main.rs") | {"log", "log-format"}
    assert {"mode", "endpoint", "metadata-url", "cache-dir", "tls-cert-file", "plain-http"} <= csi and {"gc-image", "metrics-addr"} <= operator
    checked = 0
    for w in workloads(objects):
        for c in containers(w):
            binary = next((p for p in c.get("command", []) if p.startswith("studiodrive-")), None)
            if binary is None:
                continue
            known = csi if binary == "studiodrive-csi" else operator
            for arg in c["args"]:
                if arg.startswith("--"):
                    flag = arg[2:].split("=", 1)[0]
                    assert flag in known, f"{w['metadata']['name']}/{c['name']}: {binary} has no --{flag}"
                    checked += 1
    assert checked > 20


# ---- event relay ---------------------------------------------------------------------------

RELAY = "studiodrive-relay"


def relay_container(objects) -> dict[str, Any]:
    (c,) = pod_spec(find(objects, "Deployment", RELAY))["containers"]
    return c


def relay_objects(objects) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "relay"
            or "relay" in o["metadata"]["name"]]


def test_relay_runs_by_default_with_two_replicas_a_pdb_and_its_command(default_objects):
    main = (ROOT / "csi-driver/src/main.rs").read_text()
    assert "Relay(events::RelayArgs)" in main  # `studiodrive-csi relay`
    dep = find(default_objects, "Deployment", RELAY)
    assert dep["spec"]["replicas"] == 2
    c = relay_container(default_objects)
    assert c["image"] == f"{IMAGE_REPO}:{APP_VERSION}"
    assert c["image"] == pod_spec(find(default_objects, "Deployment", "studiodrive-operator"))["containers"][0]["image"]
    assert c["command"] == ["/usr/bin/tini", "--", "studiodrive-csi"]
    assert c["args"] == ["--log-json", "relay", "--metrics-addr=0.0.0.0:9810", "--lease-secs=30", "--poll-ms=200",
                         "--max-backoff-ms=10000", f"--sink-secret-key-file={SINK_KEY_FILE}"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RUST_LOG"] == "info"
    # Standbys on other nodes, and one kept through drains.
    anti = pod_spec(dep)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pdb = find(default_objects, "PodDisruptionBudget", RELAY)
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # The relay's own selector picks only its pods.
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "relay"


def test_relay_values_reach_its_flags_and_one_replica_has_no_pdb(monitoring_chart):
    objects = render_combo("relay-single-tuned", monitoring_chart)
    dep = find(objects, "Deployment", RELAY)
    assert dep["spec"]["replicas"] == 1
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == RELAY]
    c = relay_container(objects)
    assert c["args"] == ["--log-json", "relay", "--metrics-addr=0.0.0.0:9911", "--lease-secs=60", "--poll-ms=500",
                         "--max-backoff-ms=60000", f"--sink-secret-key-file={SINK_KEY_FILE}"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RUST_LOG"] == "drive=debug,info"
    assert pod_spec(dep)["priorityClassName"] == "events"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9911, "protocol": "TCP"}]
    svc = find(objects, "Service", f"{RELAY}-metrics")
    assert svc["spec"]["ports"][0]["port"] == 9911
    monitor = find(objects, "ServiceMonitor", RELAY)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_relay_bounds_in_the_schema_are_the_flags_bounds():
    source = (ROOT / "csi-driver/src/cli/events.rs").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["relay"]["properties"]
    for flag, value in (("lease_secs", "leaseSeconds"), ("poll_ms", "pollMs"), ("max_backoff_ms", "maxBackoffMs")):
        m = re.search(r"range\((\d[\d_]*)\.\.=(\d[\d_]*)\)\)\]\s*pub " + flag + r":", source)
        assert m, f"events.rs: no range for {flag}"
        low, high = (int(x.replace("_", "")) for x in m.groups())
        assert (schema[value]["minimum"], schema[value]["maximum"]) == (low, high), value
        assert schema[value]["description"]


def test_relay_is_unprivileged_without_api_access(default_objects):
    dep = find(default_objects, "Deployment", RELAY)
    spec = pod_spec(dep)
    assert spec["serviceAccountName"] == RELAY
    assert spec["automountServiceAccountToken"] is False
    sa = find(default_objects, "ServiceAccount", RELAY)
    assert sa["automountServiceAccountToken"] is False
    assert not subjects_bound(default_objects, RELAY)  # no RBAC at all
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # One volume: the sink secrets key (read-only, from a Secret).
    assert [v["name"] for v in spec["volumes"]] == ["sink-secrets-key"]
    assert set(volume_named(spec, "sink-secrets-key")) == {"name", "secret"}
    assert [m["readOnly"] for m in relay_container(default_objects)["volumeMounts"]] == [True]
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    sc = relay_container(default_objects)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")


def test_relay_is_probed_on_its_metrics_port(default_objects):
    # The metrics endpoint answers every path with the metrics (service_fn ignores the request).
    metrics = (ROOT / "csi-driver/src/metrics.rs").read_text()
    assert "service_fn(move |_req|" in metrics
    c = relay_container(default_objects)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9810, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics", probe
    # No other port of the chart is the relay's.
    used = [p["containerPort"] for w in workloads(default_objects) for ct in containers(w)
            for p in ct.get("ports", []) if w["metadata"]["name"] != RELAY]
    assert 9810 not in used, used
    svc = find(default_objects, "Service", f"{RELAY}-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9810, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == find(default_objects, "Deployment", RELAY)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("combo", ["defaults", "metadata-custom", "s3-endpoint-credentials"])
def test_relay_metadata_settings_are_the_operators(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    values = COMBOS[combo].get("metadata", {})
    env = {e["name"]: e for e in relay_container(objects)["env"]}
    op = pod_spec(find(objects, "Deployment", "studiodrive-operator"))["containers"][0]
    op_env = {e["name"]: e for e in op["env"]}
    assert env["STUDIODRIVE_METADATA_URL"] == op_env["STUDIODRIVE_METADATA_URL"]
    assert env["STUDIODRIVE_METADATA_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": values.get("existingSecret", "studiodrive-metadata"), "key": values.get("secretKey", "url")}
    timeout = next(a.split("=", 1)[1] for a in op["args"] if a.startswith("--metadata-statement-timeout-ms="))
    assert env["STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS"]["value"] == timeout
    assert timeout == str(values.get("statementTimeoutMs", 15000))
    # The same settings as the CSI plugin (one helper renders both).
    node = {e["name"]: e for e in pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]["env"]}
    for name in ("STUDIODRIVE_METADATA_URL", "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS"):
        assert env[name] == node[name]
    # The relay needs no block store, and studiodrive-csi has no TLS setting to pass.
    assert not any(n.startswith(("STUDIODRIVE_STORE", "STUDIODRIVE_S3_")) for n in env)
    assert not any("tls" in a or "ca-file" in a for a in relay_container(objects)["args"])


def test_relay_disabled_renders_none_of_it(monitoring_chart):
    off = render(COMBOS["relay-off"] | {"metrics": {"serviceMonitor": {"enabled": True}}})
    assert not relay_objects(off), [key(o) for o in relay_objects(off)]
    on = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert {key(o) for o in relay_objects(on)} == {
        ("ServiceAccount", RELAY), ("Deployment", RELAY), ("PodDisruptionBudget", RELAY),
        ("Service", f"{RELAY}-metrics"), ("ServiceMonitor", RELAY)}
    # Nothing else changes.
    assert {key(o) for o in on} - {key(o) for o in relay_objects(on)} == {key(o) for o in off}


def test_relay_without_metrics_keeps_its_probe_endpoint(monitoring_chart):
    objects = render_combo("metrics-off", monitoring_chart)
    c = relay_container(objects)
    assert "--metrics-addr=0.0.0.0:9810" in c["args"]
    assert c["livenessProbe"]["httpGet"]["port"] == "metrics"


# ---- HTTP API ------------------------------------------------------------------------------

API = "studiodrive-api"
API_TLS_SECRET = "studiodrive-api-tls"
API_TLS_DIR = "/etc/studiodrive/api-tls"
API_MEMORY_LIMIT = "5Gi"
API_DNS_NAMES = [API, f"{API}.{NAMESPACE}", f"{API}.{NAMESPACE}.svc", f"{API}.{NAMESPACE}.svc.cluster.local"]

def api_container(objects, name: str = API) -> dict[str, Any]:
    (c,) = pod_spec(find(objects, "Deployment", name))["containers"]
    return c


def api_objects(objects) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api"
            or "-api" in o["metadata"]["name"]]


def api_tls_source(objects, name: str = API) -> str:
    """The Secret the API's --tls-cert-file and --tls-key-file read, checked end to end: both
    flags name files of one read-only mount (no subPath, so kubelet updates them when the
    Secret changes) of a volume holding tls.crt and tls.key of that Secret, readable by the
    container's user through the pod's fsGroup and by no one else."""
    spec = pod_spec(find(objects, "Deployment", name))
    (c,) = spec["containers"]
    flags = dict(a[2:].split("=", 1) for a in c["args"] if a.startswith("--tls-"))
    assert set(flags) == {"tls-cert-file", "tls-key-file"}, c["args"]
    cert, tls_key = Path(flags["tls-cert-file"]), Path(flags["tls-key-file"])
    assert cert.parent == tls_key.parent
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(cert.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount, mount
    secret = volume_named(spec, mount["name"])["secret"]
    assert {i["key"]: i["path"] for i in secret["items"]} == {"tls.crt": cert.name, "tls.key": tls_key.name}
    assert secret["defaultMode"] == 0o440, oct(secret["defaultMode"])
    assert spec["securityContext"]["fsGroup"] == c["securityContext"]["runAsGroup"] == 65532
    assert c["securityContext"]["runAsUser"] == 65532
    return secret["secretName"]


def api_tls_secret(objects) -> dict[str, Any] | None:
    hits = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
    assert len(hits) <= 1, [key(o) for o in hits]
    return hits[0] if hits else None


def certificates(objects) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "Certificate"]


def test_api_runs_by_default_over_tls_with_two_replicas_and_a_pdb(default_objects):
    main = (ROOT / "csi-driver/src/main.rs").read_text()
    assert "Api(api::ApiArgs)" in main  # `studiodrive-csi api`
    dep = find(default_objects, "Deployment", API)
    assert dep["spec"]["replicas"] == 2
    c = api_container(default_objects)
    assert c["image"] == f"{IMAGE_REPO}:{APP_VERSION}"
    assert c["command"] == ["/usr/bin/tini", "--", "studiodrive-csi"]
    assert c["args"] == ["--log-json", "api", "--audience=studiodrive-api", "--listen=0.0.0.0:8443",
                         f"--tls-cert-file={API_TLS_DIR}/tls.crt", f"--tls-key-file={API_TLS_DIR}/tls.key",
                         "--max-document-bytes=209715200", "--metrics-addr=0.0.0.0:9465"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RUST_LOG"] == "info"
    assert c["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9465, "protocol": "TCP"}]
    # The generated certificate's Secret is the one mounted.
    assert api_tls_source(default_objects) == API_TLS_SECRET == api_tls_secret(default_objects)["metadata"]["name"]
    anti = pod_spec(dep)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pdb = find(default_objects, "PodDisruptionBudget", API)
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def test_api_is_probed_on_healthz_and_readyz_over_https(default_objects):
    source = (ROOT / "csi-driver/src/api/mod.rs").read_text()
    assert '(&Method::GET, ["healthz"]) => return json_response(StatusCode::OK' in source  # before auth
    assert '(&Method::GET, ["readyz"]) =>' in source  # before auth
    c = api_container(default_objects)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}, probe
    # The pod waits for the endpoint removal before SIGTERM starts the drain (next test).
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}


def api_drain_seconds() -> int:
    source = (ROOT / "csi-driver/src/api/mod.rs").read_text()
    return int(re.search(r"pub const DRAIN: std::time::Duration = std::time::Duration::from_secs\((\d+)\);",
                         source).group(1))


@pytest.mark.parametrize("combo", ["defaults", "api-plain", "api-large-documents-metrics"])
def test_api_grace_period_covers_the_prestop_pause_and_the_drain(combo, monitoring_chart):
    # On SIGTERM the API stops accepting and lets requests in flight finish for up to DRAIN
    # (csi-driver/src/api/mod.rs); the kubelet counts the preStop pause in the grace period,
    # so both must fit in it, with room for the process to exit.
    assert api_drain_seconds() == 20
    objects = render_combo(combo, monitoring_chart)
    spec = pod_spec(find(objects, "Deployment", API))
    pause = api_container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= 30 and grace >= pause + api_drain_seconds() + 5, (grace, pause)
    assert grace == COMBOS[combo].get("api", {}).get("terminationGracePeriodSeconds", 30)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["api"]["properties"]["terminationGracePeriodSeconds"]["minimum"] == 30


def test_api_service_sends_443_to_the_https_port(default_objects):
    svc = find(default_objects, "Service", API)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == find(default_objects, "Deployment", API)["spec"]["selector"]["matchLabels"]
    # No other workload's container listens on the API's port.
    used = [p["containerPort"] for w in workloads(default_objects) for ct in containers(w)
            for p in ct.get("ports", []) if w["metadata"]["name"] != API]
    assert 8443 not in used and 8480 not in used, used


@pytest.mark.parametrize("combo", ["defaults", "api-plain", "api-large-documents-metrics"])
def test_api_metrics_are_plain_http_on_a_service_of_their_own(combo, monitoring_chart):
    cli = (ROOT / "csi-driver/src/cli/api.rs").read_text()
    assert 'env = "STUDIODRIVE_API_METRICS_ADDR"' in cli
    # The shared metrics server (plain HTTP/1, as the relay's and the CSI plugin's), not the
    # API's TLS listener: the metrics port has no token and no certificate.
    assert "crate::metrics::serve(addr, metrics, stop)" in cli
    objects = render_combo(combo, monitoring_chart)
    port = COMBOS[combo].get("metrics", {}).get("apiPort", 9465)
    dep = find(objects, "Deployment", API)
    c = api_container(objects)
    assert [a for a in c["args"] if a.startswith("--metrics-addr")] == [f"--metrics-addr=0.0.0.0:{port}"]
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]
    svc = find(objects, "Service", f"{API}-metrics")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    # The API's own Service stays the API's.
    assert [p["name"] for p in find(objects, "Service", API)["spec"]["ports"]] in (["https"], ["http"])
    # No other container listens on it.
    used = [p["containerPort"] for w in workloads(objects) for ct in containers(w)
            for p in ct.get("ports", []) if w["metadata"]["name"] != API]
    assert port not in used, used
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == API]
    if COMBOS[combo].get("metrics", {}).get("serviceMonitor", {}).get("enabled"):
        (m,) = monitors
        assert m["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        (endpoint,) = m["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert "scheme" not in endpoint and "tlsConfig" not in endpoint  # plain HTTP
    else:
        assert not monitors


def test_api_audience_is_the_binarys_default():
    source = (ROOT / "csi-driver/src/cli/api.rs").read_text()
    default = re.search(r'env = "STUDIODRIVE_API_AUDIENCE", default_value = "([^"]+)"', source).group(1)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["api"]["audience"] == default == "studiodrive-api"


def test_api_may_create_tokenreviews_and_nothing_else(default_objects):
    assert can(default_objects, API, "create", "authentication.k8s.io", "tokenreviews")
    rules = [r for g in subjects_bound(default_objects, API) for r in g["rules"]]
    assert rules == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    (grant,) = subjects_bound(default_objects, API)
    assert grant["namespace"] is None  # TokenReviews are cluster-scoped
    role = find(default_objects, "ClusterRole", API)
    assert role["rules"] == rules
    binding = find(default_objects, "ClusterRoleBinding", API)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": API}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": API, "namespace": NAMESPACE}]


def test_api_is_unprivileged_with_its_token_mounted(default_objects):
    spec = pod_spec(find(default_objects, "Deployment", API))
    assert spec["serviceAccountName"] == API
    find(default_objects, "ServiceAccount", API)
    # The token is needed: TokenReviews are the API's own calls to Kubernetes.
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert [v["name"] for v in spec["volumes"]] == ["tls"]
    assert set(volume_named(spec, "tls")) == {"name", "secret"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    sc = api_container(default_objects)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    # As strict as the relay's.
    assert sc == relay_container(default_objects)["securityContext"]


@pytest.mark.parametrize("combo", ["defaults", "metadata-custom", "s3-endpoint-credentials"])
def test_api_metadata_settings_are_the_relays(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    env = {e["name"]: e for e in api_container(objects)["env"]}
    relay_env = {e["name"]: e for e in relay_container(objects)["env"]}
    for name in ("STUDIODRIVE_METADATA_URL", "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS"):
        assert env[name] == relay_env[name], name
    # Besides these, only the block store's settings (next tests); and studiodrive-csi has
    # no metadata TLS setting to pass.
    assert {n for n in env if not n.startswith(("STUDIODRIVE_STORE", "STUDIODRIVE_S3_"))} == {
        "RUST_LOG", "STUDIODRIVE_METADATA_URL", "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS"}
    assert not any("metadata-ca" in a or "metadata-tls" in a for a in api_container(objects)["args"])


STORE_ENV = ("STUDIODRIVE_STORE", "STUDIODRIVE_S3_")


def store_env(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in container["env"] if e["name"].startswith(STORE_ENV)]


def test_api_opens_the_block_store_it_is_given():
    # Documents over 1 MiB keep their text in the block store: `api` opens the one --store
    # names (STUDIODRIVE_STORE); with a remote metadata URL and no store it refuses them.
    api = (ROOT / "csi-driver/src/cli/api.rs").read_text()
    assert "storage.document_store(&meta)" in api and "pub storage: StorageArgs" in api
    storage = (ROOT / "csi-driver/src/cli/mod.rs").read_text()
    assert "(None, Some(_)) => None," in storage and 'env = "STUDIODRIVE_STORE"' in storage


@pytest.mark.parametrize("combo", ["defaults", "s3-endpoint-credentials", "api-plain-s3-credentials"])
def test_api_gets_the_node_plugins_s3_store(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    c = api_container(objects)
    node = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]
    # The same store, the same S3 settings, in the same order (one helper renders both).
    assert store_env(c) == store_env(node)
    env = {e["name"]: e.get("value") for e in store_env(c)}
    assert env["STUDIODRIVE_STORE"].startswith("s3://")
    s3 = COMBOS[combo].get("objectStore", {}).get("s3", {})
    assert ("STUDIODRIVE_S3_ENDPOINT" in env) == ("endpoint" in s3)
    assert ("STUDIODRIVE_S3_REGION" in env) == ("region" in s3)
    assert env["STUDIODRIVE_S3_MAX_ATTEMPTS"] == "5"


def mount_of_file(container: dict[str, Any], path: str) -> dict[str, Any]:
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    return mount


@pytest.mark.parametrize("combo", ["s3-endpoint-credentials", "api-plain-s3-credentials"])
def test_api_reads_the_s3_credentials_the_node_plugin_reads(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    s3 = COMBOS[combo]["objectStore"]["s3"]
    spec = pod_spec(find(objects, "Deployment", API))
    c = api_container(objects)
    node_spec = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))
    node = node_spec["containers"][0]
    path = {e["name"]: e.get("value") for e in c["env"]}["STUDIODRIVE_S3_CREDENTIALS_FILE"]
    assert path == f"/etc/studiodrive/s3/{s3.get('credentialsKey', 'credentials')}"
    # The file is in a read-only mount of the Secret, at the node plugin's path.
    mount = mount_of_file(c, path)
    assert mount == mount_of_file(node, path) == {"name": "s3-credentials", "mountPath": "/etc/studiodrive/s3",
                                                   "readOnly": True}
    secret = volume_named(spec, mount["name"])["secret"]
    assert secret["secretName"] == volume_named(node_spec, "s3-credentials")["secret"]["secretName"] == s3["credentialsSecret"]
    # Secret files are root's: the non-root API reads them through its fsGroup (0440), the
    # root node plugin alone (0400).
    assert secret["defaultMode"] == 0o440, oct(secret["defaultMode"])
    assert spec["securityContext"]["fsGroup"] == c["securityContext"]["runAsGroup"] == 65532
    assert volume_named(node_spec, "s3-credentials")["secret"]["defaultMode"] == 0o400
    # Plain HTTP has no TLS volume: the credentials are the only one.
    tls = COMBOS[combo].get("api", {}).get("tls", {}).get("mode") != "plain"
    assert [v["name"] for v in spec["volumes"]] == ["tls"] * tls + ["s3-credentials"]


@pytest.mark.parametrize("combo", ["defaults", "api-plain"])
def test_api_without_s3_credentials_mounts_none(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    c = api_container(objects)
    assert "STUDIODRIVE_S3_CREDENTIALS_FILE" not in {e["name"] for e in c["env"]}
    volumes = [v["name"] for v in pod_spec(find(objects, "Deployment", API)).get("volumes", [])]
    assert "s3-credentials" not in volumes
    assert all(m["name"] != "s3-credentials" for m in c.get("volumeMounts", []))


@pytest.mark.parametrize("combo", ["file-store-claim", "file-store-hostpath"])
def test_api_gets_no_file_store(combo, monitoring_chart):
    # A file store's folders are created 0700 by the node plugin, which runs as root: the
    # API (uid 65532, kept non-root) could not open the store (LocalChunkStore::open lists
    # its .tmp folder) and would not start. So it gets no store and refuses documents over
    # 1 MiB, as GC and preload Jobs get none. Should files become shareable, this fails.
    private = (ROOT / "drive/src/private_files.rs").read_text()
    assert "pub const DIR_MODE: u32 = 0o700;" in private
    assert "private_files::create_dir_all(&tmp)?;" in (ROOT / "drive/src/data/local.rs").read_text()
    objects = render_combo(combo, monitoring_chart)
    node = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]
    assert node["securityContext"]["runAsUser"] == 0
    c = api_container(objects)
    assert store_env(c) == []
    spec = pod_spec(find(objects, "Deployment", API))
    assert [v["name"] for v in spec["volumes"]] == ["tls"]
    assert [m["name"] for m in c["volumeMounts"]] == ["tls"]
    assert c["securityContext"] == relay_container(objects)["securityContext"]
    # Said where a file store is chosen, and in the install guide.
    values = (CHART / "values.yaml").read_text()
    assert "the API gets no file store" in " ".join(l.strip(" #") for l in values.splitlines())
    install = " ".join((ROOT / "docs/install.md").read_text().split())
    assert "With a file store the API gets no block store" in install
    assert "Nor is the API" in notes(COMBOS[combo]) and "refuses media documents over 1 MiB" in notes(COMBOS[combo])
    assert "Nor is the API" not in notes({"api": {"enabled": False}, **COMBOS[combo]})


def test_api_memory_limit_holds_two_large_document_writes(default_objects):
    # At most LARGE_WRITES bodies over 1 MiB are read at once, and a write holds the body,
    # its parsed form and the text it stores: the limit is sized for that, the request not.
    source = (ROOT / "csi-driver/src/api/mod.rs").read_text()
    assert re.search(r"pub const LARGE_WRITES: usize = 2;", source)
    resources = api_container(default_objects)["resources"]
    assert resources == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": API_MEMORY_LIMIT}}
    values = " ".join(l.strip(" #") for l in (CHART / "values.yaml").read_text().splitlines())
    assert "two document writes over 1 MiB at once" in values, "values.yaml: say why the API's limit is what it is"
    # Two writes of the largest document the chart lets through, at about 12 times its size
    # each (measured 11.6), fit in the limit.
    assert "--max-document-bytes=209715200" in api_container(default_objects)["args"]
    assert 2 * 12 * 209715200 <= 5 * 2**30
    assert "2 x 12 x 200 MiB = about 4.7 GiB of the 5Gi. Raise both together" in values


@pytest.mark.parametrize("combo", ["defaults", "api-plain", "api-large-documents-metrics"])
def test_api_max_document_bytes_comes_from_the_value(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    size = COMBOS[combo].get("api", {}).get("maxDocumentBytes", 209715200)
    flags = [a for a in api_container(objects)["args"] if a.startswith("--max-document-bytes")]
    assert flags == [f"--max-document-bytes={size}"]  # an integer, not 2.097152e+08
    # The schema's bounds are the binary's (a value parser over 1..=drive::media::MAX_DOCUMENT_BYTES).
    cli = (ROOT / "csi-driver/src/cli/api.rs").read_text()
    assert 'env = "STUDIODRIVE_API_MAX_DOCUMENT_BYTES"' in cli
    assert "range(1..=drive::media::MAX_DOCUMENT_BYTES as u64)" in cli
    assert "pub const MAX_DOCUMENT_BYTES: usize = 512 << 20;" in (ROOT / "drive/src/media/mod.rs").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["api"]["properties"]
    assert (schema["maxDocumentBytes"]["minimum"], schema["maxDocumentBytes"]["maximum"]) == (1, 512 << 20)


def test_api_refuses_a_max_document_size_over_the_engines_bound():
    render({"api": {"maxDocumentBytes": 536870912}})
    for size in (536870913, 1 << 30, 0):
        with pytest.raises(helm.HelmValuesError, match="maxDocumentBytes"):
            render({"api": {"maxDocumentBytes": size}})


def test_api_values_reach_its_flags_and_one_replica_has_no_pdb(monitoring_chart):
    objects = render_combo("api-single-tuned", monitoring_chart)
    dep = find(objects, "Deployment", API)
    assert dep["spec"]["replicas"] == 1
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == API]
    c = api_container(objects)
    assert "--audience=render-farm" in c["args"]
    assert {e["name"]: e.get("value") for e in c["env"]}["RUST_LOG"] == "drive_csi=debug,info"
    assert pod_spec(dep)["priorityClassName"] == "api"


def test_api_disabled_renders_none_of_it(monitoring_chart):
    off = render_combo("api-off", monitoring_chart)
    assert not api_objects(off), [key(o) for o in api_objects(off)]
    on = render()
    assert {key(o) for o in api_objects(on)} == {
        ("ServiceAccount", API), ("ClusterRole", API), ("ClusterRoleBinding", API), ("Deployment", API),
        ("PodDisruptionBudget", API), ("Service", API), ("Service", f"{API}-metrics"), ("Secret", API_TLS_SECRET)}
    # Nothing else changes.
    assert {key(o) for o in on} - {key(o) for o in api_objects(on)} == {key(o) for o in off}
    assert "HTTP API" not in notes(COMBOS["api-off"])
    # Nor does a ServiceMonitor for it come without it.
    monitored = render({"api": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}})
    assert not api_objects(monitored), [key(o) for o in api_objects(monitored)]
    # Its TLS checks apply only to a rendered API.
    render({"api": {"enabled": False, "tls": {"mode": "certManager"}}})


def test_api_plain_mode_serves_http_behind_a_mesh_only(monitoring_chart):
    objects = render_combo("api-plain", monitoring_chart)
    c = api_container(objects)
    assert c["args"] == ["--log-json", "api", "--audience=studiodrive-api", "--listen=0.0.0.0:8480", "--plain-http",
                         "--max-document-bytes=209715200", "--metrics-addr=0.0.0.0:9465"]
    assert c["ports"] == [{"name": "http", "containerPort": 8480, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9465, "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTP"}, probe
    assert "volumeMounts" not in c and "volumes" not in pod_spec(find(objects, "Deployment", API))
    assert api_tls_secret(objects) is None and not certificates(objects)
    svc = find(objects, "Service", API)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    text = notes(COMBOS["api-plain"])
    assert "WARNING: api.tls.mode=plain" in text and "in the clear" in text and "linkerd" in text
    assert f"http://{API}.{NAMESPACE}.svc/v1/datastores" in text
    assert "WARNING" not in notes()


def test_api_cert_manager_mode_renders_a_certificate_for_the_mounted_secret(monitoring_chart):
    objects = render_combo("api-cert-manager", monitoring_chart)
    (cert,) = certificates(objects)
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["name"] == API and cert["metadata"]["namespace"] == NAMESPACE
    spec = cert["spec"]
    assert spec["secretName"] == API_TLS_SECRET == api_tls_source(objects)
    assert spec["issuerRef"] == {"name": "studio-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["dnsNames"] == API_DNS_NAMES + ["api.studio.example", "*.api.studio.example"]  # quoted: * is YAML
    assert spec["commonName"] == f"{API}.{NAMESPACE}.svc"
    assert "server auth" in spec["usages"]
    assert api_tls_secret(objects) is None  # cert-manager writes it
    assert "--listen=0.0.0.0:8443" in api_container(objects)["args"]
    assert "ClusterIssuer studio-ca" in notes(COMBOS["api-cert-manager"])


def test_api_existing_secret_mode_mounts_the_named_secret(monitoring_chart):
    objects = render_combo("api-existing-secret", monitoring_chart)
    assert api_tls_source(objects) == "studio-api-cert"
    assert api_tls_secret(objects) is None and not certificates(objects)
    assert "Secret studio-api-cert (keys tls.crt, tls.key)" in notes(COMBOS["api-existing-secret"])


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not found: the generated certificate cannot be read")
    return subprocess.run([exe, *args], input=data, capture_output=True)


def generated_cert(objects) -> tuple[bytes, bytes, bytes]:
    """(tls.crt, tls.key, ca.crt) of the generated Secret."""
    secret = api_tls_secret(objects)
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v, validate=True) for k, v in secret["data"].items()}
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    return data["tls.crt"], data["tls.key"], data["ca.crt"]


def cert_dns_names(cert: bytes) -> list[str]:
    out = openssl("x509", "-noout", "-ext", "subjectAltName", data=cert)
    assert out.returncode == 0, out.stderr
    return re.findall(r"DNS:([^,\s]+)", out.stdout.decode())


def test_api_generated_certificate_is_for_the_service_names_with_its_key_and_ca(default_objects, tmp_path):
    cert, tls_key, ca = generated_cert(default_objects)
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY-----" in tls_key
    assert cert_dns_names(cert) == API_DNS_NAMES
    # Signed by ca.crt, a CA: what rustls clients (webpki) accept as a trust anchor, which
    # a self-signed server certificate is not.
    assert ca != cert
    (tmp_path / "ca.crt").write_bytes(ca)
    verified = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), data=cert)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    constraints = openssl("x509", "-noout", "-ext", "basicConstraints", data=ca).stdout.decode()
    assert "CA:TRUE" in constraints, constraints
    usage = openssl("x509", "-noout", "-ext", "extendedKeyUsage", data=cert).stdout.decode()
    assert "TLS Web Server Authentication" in usage, usage
    # The key is the certificate's.
    pub_cert = openssl("x509", "-noout", "-pubkey", data=cert)
    pub_key = openssl("pkey", "-pubout", data=tls_key)
    assert pub_cert.returncode == pub_key.returncode == 0, (pub_cert.stderr, pub_key.stderr)
    assert pub_cert.stdout == pub_key.stdout
    # Valid for api.tls.validityDays (3650): not ending within 3649 days, ending within 3651.
    day = 86400
    for pem in (cert, ca):
        assert openssl("x509", "-noout", "-checkend", str(3649 * day), data=pem).returncode == 0
        assert openssl("x509", "-noout", "-checkend", str(3651 * day), data=pem).returncode == 1
    # New ones on each offline render (lookup finds nothing without a cluster).
    again, _, again_ca = generated_cert(render())
    assert again != cert and again_ca != ca


def test_api_generated_certificate_follows_the_names_and_validity(monitoring_chart):
    objects = render_combo("api-single-tuned", monitoring_chart)
    cert, _, _ = generated_cert(objects)
    assert cert_dns_names(cert)[-1] == f"{API}.{NAMESPACE}.svc.studio.internal"
    day = 86400
    assert openssl("x509", "-noout", "-checkend", str(364 * day), data=cert).returncode == 0
    assert openssl("x509", "-noout", "-checkend", str(366 * day), data=cert).returncode == 1
    objects = render({"fullnameOverride": "sd", "api": {"tls": {"extraDnsNames": ["api.studio.example"]}}})
    assert api_tls_source(objects, "sd-api") == "sd-api-tls"
    assert find(objects, "Service", "sd-api")
    cert, _, _ = generated_cert(objects)
    assert cert_dns_names(cert) == ["sd-api", f"sd-api.{NAMESPACE}", f"sd-api.{NAMESPACE}.svc",
                                    f"sd-api.{NAMESPACE}.svc.cluster.local", "api.studio.example"]


def api_tls_for(objects) -> str:
    return api_tls_secret(objects)["metadata"]["annotations"]["studiodrive.dev/api-tls-for"]


def test_api_generated_certificate_is_looked_up_and_kept_while_its_names_stay():
    # `lookup` answers only against a cluster (an upgrade); offline renders cannot exercise it.
    source = (CHART / "templates/api-tls.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $secret' in source
    assert "genCA" in source and "genSignedCert" in source
    # A kept certificate is reused while the annotation matches: it depends on the names and
    # the validity only (the same on every render), not on the random certificate.
    default = api_tls_for(render())
    assert default == api_tls_for(render()) and re.fullmatch(r"[0-9a-f]{16}", default)
    assert api_tls_for(render({"api": {"tls": {"extraDnsNames": ["api.studio.example"]}}})) != default
    assert api_tls_for(render({"api": {"tls": {"validityDays": 365}}})) != default
    assert api_tls_for(render({"fullnameOverride": "sd"})) != default


def chart_with_api_tls_in_cluster(tmp_path: Path, annotation: str, data: dict[str, str]) -> Path:
    """The chart with the API TLS Secret's lookup answering as a cluster holding that Secret."""
    chart = tmp_path / "studiodrive"
    shutil.copytree(CHART, chart)
    template = chart / "templates/api-tls.yaml"
    lookup = 'lookup "v1" "Secret" .Release.Namespace $secret'
    source = template.read_text()
    assert source.count(lookup) == 1
    items = " ".join(f'"{k}" "{v}"' for k, v in data.items())
    found = (f'(dict "metadata" (dict "annotations" (dict "studiodrive.dev/api-tls-for" "{annotation}")) '
             f'"data" (dict {items}))')
    template.write_text(source.replace(lookup, found))
    return chart


def test_api_generated_certificate_in_the_cluster_is_kept_while_its_names_stay(tmp_path):
    current = api_tls_for(render())
    kept = {name: base64.b64encode(f"kept {name}".encode()).decode() for name in ("tls.crt", "tls.key", "ca.crt")}
    chart = chart_with_api_tls_in_cluster(tmp_path / "same", current, kept)
    secret = api_tls_secret(render(chart_path=chart))
    assert secret["data"] == kept
    assert api_tls_for(render(chart_path=chart)) == current
    # Other names: a new certificate (for them), not the kept one.
    objects = render({"api": {"tls": {"extraDnsNames": ["api.studio.example"]}}}, chart_path=chart)
    assert api_tls_secret(objects)["data"]["tls.crt"] != kept["tls.crt"]
    # A Secret lacking a key (edited by hand, from an older chart): a new certificate.
    for missing in kept:
        partial = {k: v for k, v in kept.items() if k != missing}
        chart = chart_with_api_tls_in_cluster(tmp_path / f"without-{missing}", current, partial)
        assert api_tls_secret(render(chart_path=chart))["data"]["tls.crt"] != kept["tls.crt"], missing


def test_notes_say_how_a_pod_calls_the_api():
    text = notes()
    assert f"The HTTP API ({API}) serves https://{API}.{NAMESPACE}.svc" in text
    assert f"https://{API}.{NAMESPACE}.svc/openapi.json" in text
    assert "serviceAccountToken: audience: studiodrive-api expirationSeconds: 3600 path: token" in text
    assert 'Authorization: Bearer $(cat /var/run/secrets/studiodrive-api/token)' in text
    assert "curl --cacert ca.crt" in text
    assert f"get secret {API_TLS_SECRET} -o jsonpath='{{.data.ca\\.crt}}'" in text
    text = notes(COMBOS["api-single-tuned"])
    assert "serviceAccountToken: audience: render-farm" in text and "for the audience render-farm" in text


def test_kustomize_install_leaves_the_api_private_key_out():
    docs = [d for d in yaml.safe_load_all(chartlib.kustomize_manifest()) if d]
    assert not [d for d in docs if d["kind"] == "Secret"], "a private key in config/default would be every install's"
    # The API still mounts the Secret, which kustomize users create (docs/install.md).
    assert api_tls_source(docs) == API_TLS_SECRET
    install = (ROOT / "docs/install.md").read_text()
    assert f"create secret generic {API_TLS_SECRET} --type=kubernetes.io/tls" in install


def test_install_doc_describes_the_api():
    install = (ROOT / "docs/install.md").read_text()
    section = install.split("### The HTTP API", 1)[1].split("\n## ", 1)[0]
    for mode in ("generated", "certManager", "existingSecret", "plain"):
        assert f"`{mode}`" in section, mode
    for needle in ("serviceAccountToken", "audience: studiodrive-api", "tokenreviews", "--plain-http",
                   "/openapi.json", "Authorization: Bearer", "`metrics.apiPort`", "studiodrive-api-metrics",
                   "`api.maxDocumentBytes`", "20 s"):
        assert needle in " ".join(section.split()), needle
    upgrade = " ".join(install.split("## Upgrade", 1)[1].split("\n## ", 1)[0].split())
    assert "does not drain" not in upgrade and "finish for up to 20 s" in upgrade


# ---- sink secrets key ----------------------------------------------------------------------

SINK_KEY_SECRET = "studiodrive-sink-secrets-key"
SINK_KEY_DIR = "/etc/studiodrive/sink-secrets-key"
SINK_KEY_FILE = f"{SINK_KEY_DIR}/key"


def sink_key_secret(objects) -> dict[str, Any] | None:
    hits = [o for o in objects if o["kind"] == "Secret"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] != "api"]  # the API's TLS Secret
    assert len(hits) <= 1, [key(o) for o in hits]
    return hits[0] if hits else None


def sink_key_source(objects, workload: str) -> tuple[str, str]:
    """(Secret, key) the workload's --sink-secret-key-file reads, checked end to end: the flag
    names the file of a read-only mount of a volume holding that one key of a Secret, readable
    by the container's user through the pod's fsGroup and by no one else."""
    spec = pod_spec(find(objects, "Deployment", workload))
    (c,) = spec["containers"]
    (flag,) = [a for a in c["args"] if a.startswith("--sink-secret-key-file=")]
    path = Path(flag.split("=", 1)[1])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True, (workload, mount)
    secret = volume_named(spec, mount["name"])["secret"]
    (item,) = secret["items"]
    assert item["path"] == path.name, (workload, item)
    # Secret files belong to root: group-readable through fsGroup (the container's group).
    assert secret["defaultMode"] == 0o440, (workload, oct(secret["defaultMode"]))
    assert spec["securityContext"]["fsGroup"] == c["securityContext"]["runAsGroup"] == 65532, workload
    assert c["securityContext"]["runAsUser"] == 65532
    return secret["secretName"], item["key"]


@pytest.mark.parametrize("combo", ["defaults", "relay-single-tuned", "everything-optional"])
def test_sink_secrets_key_is_generated_with_32_alphanumerics_and_kept(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    secret = sink_key_secret(objects)
    assert secret is not None, "no sink secrets key Secret rendered"
    assert secret["metadata"]["name"] == SINK_KEY_SECRET
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["type"] == "Opaque"
    # Kept on uninstall: sealed credentials are useless without it.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert list(secret["data"]) == ["key"]
    value = base64.b64decode(secret["data"]["key"], validate=True)
    # 32 bytes: the binaries read a 32-byte file as the raw key.
    assert len(value) == 32 and re.fullmatch(rb"[A-Za-z0-9]{32}", value), value
    # Random per install, not a constant of the chart.
    again = base64.b64decode(sink_key_secret(render_combo(combo, monitoring_chart))["data"]["key"])
    assert again != value


def test_sink_secrets_key_is_looked_up_before_a_new_one_is_made():
    # `lookup` answers only against a cluster (an upgrade); offline renders cannot exercise it.
    source = (CHART / "templates/sink-secrets-key.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source
    assert "randAlphaNum 32" in source


def test_operator_and_relay_read_the_sink_secrets_key_from_the_same_secret(default_objects):
    secret = sink_key_secret(default_objects)
    want = (secret["metadata"]["name"], next(iter(secret["data"])))
    assert sink_key_source(default_objects, "studiodrive-operator") == want
    assert sink_key_source(default_objects, RELAY) == want
    assert f"--sink-secret-key-file={SINK_KEY_FILE}" in operator_args(default_objects)


def test_existing_sink_secrets_key_secret_is_mounted_and_none_is_generated(monitoring_chart):
    objects = render_combo("sink-key-existing", monitoring_chart)
    assert sink_key_secret(objects) is None
    want = ("studio-sink-key", "sealing-key")
    assert sink_key_source(objects, "studiodrive-operator") == want
    assert sink_key_source(objects, RELAY) == want
    # The metadata CA still mounts beside it.
    op = pod_spec(find(objects, "Deployment", "studiodrive-operator"))
    assert volume_named(op, "metadata-ca")["secret"]["secretName"] == "db-ca"
    assert "--metadata-ca-file=/etc/studiodrive/metadata-ca/ca.crt" in operator_args(objects)


def test_sink_secrets_key_stays_for_the_operator_without_the_relay(monitoring_chart):
    # The operator seals whether or not the chart runs a relay (one may run elsewhere).
    objects = render_combo("relay-off", monitoring_chart)
    assert sink_key_secret(objects)["metadata"]["name"] == SINK_KEY_SECRET
    assert sink_key_source(objects, "studiodrive-operator") == (SINK_KEY_SECRET, "key")


def test_sink_secrets_key_follows_the_fullname():
    objects = render({"fullnameOverride": "sd"})
    assert sink_key_secret(objects)["metadata"]["name"] == "sd-sink-secrets-key"
    assert sink_key_source(objects, "sd-operator") == ("sd-sink-secrets-key", "key")
    assert sink_key_source(objects, "sd-relay") == ("sd-sink-secrets-key", "key")


def test_kustomize_install_leaves_the_random_key_out():
    docs = [d for d in yaml.safe_load_all(chartlib.kustomize_manifest()) if d]
    assert not [d for d in docs if d["kind"] == "Secret"], "a key in config/default would be every install's key"
    # Its workloads still read the Secret, which kustomize users create (docs/install.md).
    assert sink_key_source(docs, "studiodrive-operator") == (SINK_KEY_SECRET, "key")
    assert sink_key_source(docs, RELAY) == (SINK_KEY_SECRET, "key")
    install = (ROOT / "docs/install.md").read_text()
    assert f"create secret generic {SINK_KEY_SECRET}" in install


def test_notes_say_where_the_sink_secrets_key_is_and_what_losing_it_costs():
    text = notes()
    assert f"Secret {SINK_KEY_SECRET}, key key" in text
    assert "the operator re-seals from the Secrets on the next reconcile" in text
    assert "sink put" in text
    text = notes(COMBOS["sink-key-existing"])
    assert "Secret studio-sink-key, key sealing-key" in text


# ---- RBAC ----------------------------------------------------------------------------------

def subjects_bound(objects, sa_name: str) -> list[dict[str, Any]]:
    """Roles bound to a ServiceAccount: [{"rules", "namespace" (None: cluster-wide)}]."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    grants = []
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s["namespace"] == NAMESPACE
                   for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role_ns = ns if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        grants.append({"rules": role["rules"], "namespace": ns})
    return grants


def can(objects, sa: str, verb: str, group: str, resource: str, namespace: str | None = None,
        name: str | None = None) -> bool:
    """Whether `sa` may `verb` the resource: in `namespace`, or cluster-wide when None."""
    for grant in subjects_bound(objects, sa):
        if grant["namespace"] is not None and grant["namespace"] != namespace:
            continue
        for rule in grant["rules"]:
            if (group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
                    and verb in rule["verbs"]
                    and (not rule.get("resourceNames") or (name is not None and name in rule["resourceNames"]))):
                return True
    return False


@pytest.mark.parametrize("combo", list(COMBOS))
def test_no_rbac_wildcards(combo, monitoring_chart):
    for o in render_combo(combo, monitoring_chart):
        for rule in o.get("rules", []) if o["kind"] in ("Role", "ClusterRole") else []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), (key(o), rule)


def test_node_plugin_may_create_tokenreviews_and_nothing_else(default_objects):
    sa = "studiodrive-csi-node"
    assert can(default_objects, sa, "create", "authentication.k8s.io", "tokenreviews")
    for verb in ("get", "list", "watch"):
        assert not can(default_objects, sa, verb, "", "secrets")
        assert not can(default_objects, sa, verb, "", "secrets", namespace=NAMESPACE)
    rules = [r for g in subjects_bound(default_objects, sa) for r in g["rules"]]
    assert rules == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]


def test_controller_sidecars_have_what_they_need_and_no_secrets(default_objects):
    sa = "studiodrive-csi-controller"
    for verb in ("create", "delete", "get", "list", "watch", "patch"):
        assert can(default_objects, sa, verb, "", "persistentvolumes")
    assert can(default_objects, sa, "update", "", "persistentvolumeclaims")
    assert can(default_objects, sa, "watch", "storage.k8s.io", "storageclasses")
    assert can(default_objects, sa, "create", "", "events")
    assert can(default_objects, sa, "update", "snapshot.storage.k8s.io", "volumesnapshotcontents/status")
    assert can(default_objects, sa, "create", "coordination.k8s.io", "leases", namespace=NAMESPACE)
    assert not can(default_objects, sa, "create", "coordination.k8s.io", "leases")  # not cluster-wide
    for verb in ("get", "list"):
        assert not can(default_objects, sa, verb, "", "secrets")
        assert not can(default_objects, sa, verb, "", "secrets", namespace=NAMESPACE)
    assert not can(default_objects, sa, "delete", "", "persistentvolumeclaims")


def test_operator_rbac_covers_the_seven_kinds_leases_jobs_and_events(default_objects):
    sa = "studiodrive-operator"
    for plural in ("workspaces", "snapshots", "shares", "lifecyclepolicies", "eventsinks", "preloads", "mediadatastores"):
        for verb in ("get", "list", "watch", "patch"):
            assert can(default_objects, sa, verb, "studiodrive.dev", plural)
        assert can(default_objects, sa, "patch", "studiodrive.dev", f"{plural}/status")
        assert can(default_objects, sa, "update", "studiodrive.dev", f"{plural}/finalizers")
        assert not can(default_objects, sa, "delete", "studiodrive.dev", plural)
    assert can(default_objects, sa, "create", "events.k8s.io", "events")
    assert can(default_objects, sa, "create", "coordination.k8s.io", "leases", namespace=NAMESPACE)
    assert can(default_objects, sa, "patch", "coordination.k8s.io", "leases", NAMESPACE, "studiodrive-operator")
    assert not can(default_objects, sa, "patch", "coordination.k8s.io", "leases", NAMESPACE, "someone-else")
    assert can(default_objects, sa, "create", "batch", "jobs", namespace=NAMESPACE)
    assert can(default_objects, sa, "watch", "batch", "jobs", namespace=NAMESPACE)
    assert not can(default_objects, sa, "create", "batch", "jobs", namespace="studio-a")
    assert not can(default_objects, sa, "create", "batch", "jobs")


def test_operator_may_read_nodes_and_delete_the_jobs_of_a_preload(default_objects):
    sa = "studiodrive-operator"
    source = (ROOT / "operator/src/reconcile/preload.rs").read_text()
    assert "list_metadata" in source and "delete_collection" in source
    # A Preload's node selector is matched against the Nodes: read only, cluster-wide.
    for verb in ("get", "list", "watch"):
        assert can(default_objects, sa, verb, "", "nodes")
    for verb in ("create", "update", "patch", "delete"):
        assert not can(default_objects, sa, verb, "", "nodes")
    # Its Jobs live in the release namespace and are not owned by it: its cleanup deletes them.
    for verb in ("get", "list", "watch", "create", "delete", "deletecollection"):
        assert can(default_objects, sa, verb, "batch", "jobs", namespace=NAMESPACE)
    for verb in ("delete", "deletecollection"):
        assert not can(default_objects, sa, verb, "batch", "jobs", namespace="studio-a")
        assert not can(default_objects, sa, verb, "batch", "jobs")
    # Preload Jobs need no API access: the operator may not touch pods or ServiceAccounts.
    assert not can(default_objects, sa, "create", "", "pods", namespace=NAMESPACE)
    assert not can(default_objects, sa, "create", "", "serviceaccounts", namespace=NAMESPACE)


def test_operator_reads_key_secrets_by_name_only_as_configured(default_objects, monitoring_chart):
    sa = "studiodrive-operator"
    # Default: encryption on, every namespace, get only.
    assert can(default_objects, sa, "get", "", "secrets")
    assert not can(default_objects, sa, "list", "", "secrets")
    assert not can(default_objects, sa, "watch", "", "secrets", namespace="studio-a")
    scoped = render_combo("encryption-namespaces", monitoring_chart)
    assert can(scoped, sa, "get", "", "secrets", namespace="studio-a")
    assert can(scoped, sa, "get", "", "secrets", namespace="studio-b")
    assert not can(scoped, sa, "get", "", "secrets", namespace="studio-c")
    assert not can(scoped, sa, "get", "", "secrets")
    # Encryption alone (relay off) keeps the grant, for the KEKs.
    assert can(render_combo("relay-off", monitoring_chart), sa, "get", "", "secrets")


def secret_roles(objects) -> list[tuple[str, str]]:
    return [key(o) for o in objects if o["kind"] in ("Role", "ClusterRole")
            and any("secrets" in r.get("resources", []) for r in o["rules"])]


# Catches: the grant tied to encryption.enabled only, which leaves the operator unable to read
# the Secrets EventSinks name (KeySecretUnreadable) when encryption is off and the relay on.
def test_operator_reads_eventsink_secrets_with_the_relay_even_without_encryption(monitoring_chart):
    sa = "studiodrive-operator"
    relay_only = render_combo("encryption-off", monitoring_chart)
    assert COMBOS["encryption-off"] == {"encryption": {"enabled": False}}  # relay on by default
    assert can(relay_only, sa, "get", "", "secrets")
    assert can(relay_only, sa, "get", "", "secrets", namespace="studio-a")
    for verb in ("list", "watch", "create", "update", "patch", "delete"):
        assert not can(relay_only, sa, verb, "", "secrets")
        assert not can(relay_only, sa, verb, "", "secrets", namespace="studio-a")
    # keySecretNamespaces narrows this use too.
    scoped = render_combo("relay-only-namespaces", monitoring_chart)
    assert can(scoped, sa, "get", "", "secrets", namespace="studio-a")
    assert not can(scoped, sa, "get", "", "secrets", namespace="studio-b")
    assert not can(scoped, sa, "get", "", "secrets")
    # Neither encrypted Workspaces nor a relay: no Secret access at all, and no role for it.
    off = render_combo("encryption-and-relay-off", monitoring_chart)
    assert not can(off, sa, "get", "", "secrets")
    assert not can(off, sa, "get", "", "secrets", namespace="studio-a")
    assert not can(off, sa, "get", "", "secrets", namespace=NAMESPACE)
    assert secret_roles(off) == []
    assert secret_roles(relay_only) == [("ClusterRole", "studiodrive-operator-keys")]


# ---- images and resources ------------------------------------------------------------------

@pytest.mark.parametrize("combo", list(COMBOS))
def test_images_are_pinned(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    ours = 0
    for w in workloads(objects):
        for c in containers(w):
            image = c["image"]
            if image.startswith(IMAGE_REPO):
                assert image == f"{IMAGE_REPO}:{APP_VERSION}", (w["metadata"]["name"], c["name"], image)
                ours += 1
            else:
                assert image.startswith("registry.k8s.io/sig-storage/"), image
                tag = image.rsplit(":", 1)[1]
                assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), image
    # operator, controller plugin, node plugin, event relay, API
    relay = COMBOS[combo].get("relay", {}).get("enabled", True)
    api = COMBOS[combo].get("api", {}).get("enabled", True)
    assert ours == 3 + relay + api


def test_image_tag_and_digest_overrides():
    digest = "sha256:" + "ab" * 32
    for values, want in (({"image": {"tag": "0.2.0-rc1"}}, f"{IMAGE_REPO}:0.2.0-rc1"),
                         ({"image": {"digest": digest}}, f"{IMAGE_REPO}@{digest}")):
        objects = render(values)
        images = {c["image"] for w in workloads(objects) for c in containers(w) if "studiodrive/" in c["image"]}
        assert images == {want}


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_container_has_resource_requests(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    count = 0
    for w in workloads(objects):
        for c in containers(w):
            requests = c.get("resources", {}).get("requests", {})
            assert requests.get("cpu") and requests.get("memory"), (w["metadata"]["name"], c["name"])
            count += 1
    assert count >= 7


# ---- object store, metrics -----------------------------------------------------------------

def node_env(objects) -> dict[str, Any]:
    plugin = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in plugin["env"]}


def operator_args(objects) -> list[str]:
    return pod_spec(find(objects, "Deployment", "studiodrive-operator"))["containers"][0]["args"]


def test_s3_store_settings_reach_the_node_plugin_and_gc_jobs(monitoring_chart):
    objects = render_combo("s3-endpoint-credentials", monitoring_chart)
    env = node_env(objects)
    assert env["STUDIODRIVE_STORE"] == "s3://frames/studio-a"
    assert env["STUDIODRIVE_S3_ENDPOINT"] == "http://minio.storage:9000"
    assert env["STUDIODRIVE_S3_REGION"] == "eu-west-1"
    assert env["STUDIODRIVE_S3_CREDENTIALS_FILE"] == "/etc/studiodrive/s3/credentials"
    spec = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))
    assert volume_named(spec, "s3-credentials")["secret"]["secretName"] == "studiodrive-s3"
    args = operator_args(objects)
    assert "--object-store-bucket=frames/studio-a" in args
    assert "--object-store-endpoint=http://minio.storage:9000" in args
    assert "--object-store-region=eu-west-1" in args
    assert "--gc-s3-credentials-secret=studiodrive-s3/credentials" in args


# The node plugin's block store environment, as rendered before studiodrive.objectStoreEnv
# (one helper for it and the API): name -> value, in order.
NODE_STORE_ENV = {
    "defaults": [("STUDIODRIVE_STORE", "s3://studiodrive"), ("STUDIODRIVE_S3_MAX_ATTEMPTS", "5")],
    "s3-endpoint-credentials": [
        ("STUDIODRIVE_STORE", "s3://frames/studio-a"), ("STUDIODRIVE_S3_ENDPOINT", "http://minio.storage:9000"),
        ("STUDIODRIVE_S3_REGION", "eu-west-1"), ("STUDIODRIVE_S3_MAX_ATTEMPTS", "5"),
        ("STUDIODRIVE_S3_CREDENTIALS_FILE", "/etc/studiodrive/s3/credentials")],
    "api-plain-s3-credentials": [
        ("STUDIODRIVE_STORE", "s3://studiodrive"), ("STUDIODRIVE_S3_MAX_ATTEMPTS", "5"),
        ("STUDIODRIVE_S3_CREDENTIALS_FILE", "/etc/studiodrive/s3/aws")],
    "file-store-claim": [("STUDIODRIVE_STORE", "file:///var/lib/studiodrive-blocks")],
    "file-store-hostpath": [("STUDIODRIVE_STORE", "file:///var/lib/studiodrive-blocks")],
}


@pytest.mark.parametrize("combo", list(NODE_STORE_ENV))
def test_node_plugin_store_env_is_as_before(combo, monitoring_chart):
    objects = render_combo(combo, monitoring_chart)
    plugin = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))["containers"][0]
    env = store_env(plugin)
    assert all(set(e) == {"name", "value"} for e in env), env
    assert [(e["name"], e["value"]) for e in env] == NODE_STORE_ENV[combo]
    # Right after the metadata settings.
    names = [e["name"] for e in plugin["env"]]
    assert names[names.index("STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS") + 1] == "STUDIODRIVE_STORE"


def test_file_store_is_mounted_into_the_node_plugin(monitoring_chart):
    for combo, source in (("file-store-claim", {"persistentVolumeClaim": {"claimName": "studiodrive-blocks"}}),
                          ("file-store-hostpath", {"hostPath": {"path": "/mnt/blocks", "type": "DirectoryOrCreate"}})):
        objects = render_combo(combo, monitoring_chart)
        env = node_env(objects)
        assert env["STUDIODRIVE_STORE"] == "file:///var/lib/studiodrive-blocks"
        assert "STUDIODRIVE_S3_ENDPOINT" not in env and "STUDIODRIVE_S3_MAX_ATTEMPTS" not in env
        spec = pod_spec(find(objects, "DaemonSet", "studiodrive-csi-node"))
        vol = volume_named(spec, "blocks")
        assert {k: v for k, v in vol.items() if k != "name"} == source
        assert not any(a.startswith("--object-store-") for a in operator_args(objects))


def test_metadata_url_comes_from_the_secret_everywhere(default_objects):
    for w in workloads(default_objects):
        for c in containers(w):
            if "studiodrive/" not in c["image"]:
                continue
            env = {e["name"]: e for e in c["env"]}
            ref = env["STUDIODRIVE_METADATA_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "studiodrive-metadata", "key": "url"}, (w["metadata"]["name"], ref)
            assert not any("postgres" in str(e.get("value", "")) for e in c["env"])


def test_metrics_off_renders_no_metrics_endpoints(monitoring_chart):
    objects = render_combo("metrics-off", monitoring_chart)
    kinds = {o["kind"] for o in objects}
    # The API's own Service stays: it serves the API, not metrics.
    assert [key(o) for o in objects if o["kind"] == "Service"] == [("Service", API)]
    assert "ServiceMonitor" not in kinds
    for name in ("studiodrive-csi-controller", "studiodrive-csi-node", API):
        w = next(o for o in objects if o["metadata"]["name"] == name and o["kind"] in ("Deployment", "DaemonSet"))
        c = pod_spec(w)["containers"][0]
        assert not any(a.startswith("--metrics-addr") for a in c["args"]), name
        assert "metrics" not in [p["name"] for p in c["ports"]], name


def test_metrics_on_renders_services_monitors_rules_and_dashboards(monitoring_chart):
    objects = render_combo("metrics-on-monitoring", monitoring_chart)
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert services == {"studiodrive-operator-metrics", "studiodrive-csi-controller-metrics",
                        "studiodrive-csi-node-metrics", "studiodrive-relay-metrics", API, f"{API}-metrics"}
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {
        "studiodrive-operator", "studiodrive-csi-controller", "studiodrive-csi-node", "studiodrive-relay", API}
    for m in monitors:
        assert m["spec"]["endpoints"][0]["port"] == "metrics"
        selected = [s for s in objects if s["kind"] == "Service"
                    and m["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        # Prometheus scrapes the endpoints of the port named metrics only: the API monitor
        # also matches the API's own Service, which has no such port.
        scraped = [s for s in selected if "metrics" in [p["name"] for p in s["spec"]["ports"]]]
        assert [s["metadata"]["name"] for s in scraped] == [f"{m['metadata']['name']}-metrics"], m["metadata"]["name"]
        assert {s["metadata"]["name"] for s in selected} - {scraped[0]["metadata"]["name"]} <= {API}
    rules_file = yaml.safe_load((monitoring_chart / "files/prometheus-rules.yaml").read_text())
    groups = rules_file.get("groups") or rules_file["spec"]["groups"]
    rule = find(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == groups
    assert rule["spec"]["groups"], "no rule groups"
    cm = find(objects, "ConfigMap", "studiodrive-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboards = sorted((monitoring_chart / "files/dashboards").glob("*.json"))
    assert sorted(cm["data"]) == [p.name for p in dashboards]
    for p in dashboards:
        assert json.loads(cm["data"][p.name]) == json.loads(p.read_text())


def test_prometheus_rule_takes_a_rule_file_or_a_prometheusrule_and_refuses_an_empty_one(monitoring_chart, tmp_path):
    chart = tmp_path / "studiodrive"
    shutil.copytree(monitoring_chart, chart)
    rules = chart / "files/prometheus-rules.yaml"
    groups = [{"name": "g", "rules": [{"record": "studiodrive:x", "expr": "vector(1)"}]}]
    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    rules.write_text(yaml.safe_dump({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                                     "metadata": {"name": "x"}, "spec": {"groups": groups}}))
    assert find(render(values, chart_path=chart), "PrometheusRule")["spec"]["groups"] == groups
    rules.write_text("groups: []\n")
    with pytest.raises(helm.HelmRenderError, match="no rule groups"):
        render(values, chart_path=chart)


def test_monitoring_is_off_by_default(default_objects):
    kinds = {o["kind"] for o in default_objects}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap", "VolumeSnapshotClass"}


# ---- CRDs and kustomize --------------------------------------------------------------------

def test_chart_crds_are_byte_identical_to_top_level_crds():
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert len(top) == 7
    assert sorted(chart) == sorted(top)
    for name in top:
        assert chart[name] == top[name], f"charts/studiodrive/crds/{name} differs from crds/{name}"


def test_kustomize_files_are_regenerated_from_the_chart():
    expected = chartlib.expected_kustomize_files()
    actual = {str(p.relative_to(chartlib.KUSTOMIZE_DIR)): p.read_text()
              for p in chartlib.KUSTOMIZE_DIR.rglob("*") if p.is_file()}
    assert sorted(actual) == sorted(expected), "run scripts/gen-kustomize.sh"
    for rel in expected:
        assert actual[rel] == expected[rel], f"config/default/{rel} is stale: run scripts/gen-kustomize.sh"


def test_kustomize_build_has_the_chart_objects(default_objects):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: `kubectl kustomize` cannot be checked")
    out = subprocess.run([kubectl, "kustomize", str(chartlib.KUSTOMIZE_DIR)], check=True,
                         capture_output=True, text=True).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    chart = {key(o) for o in default_objects} | {key(c) for c in chartlib.crd_objects()}
    assert chartlib.KUSTOMIZE_OMITS <= chart
    assert {key(o) for o in built} == (chart - chartlib.KUSTOMIZE_OMITS) | {("Namespace", NAMESPACE)}
    for o in built:
        assert "helm.sh/chart" not in o["metadata"].get("labels", {}), key(o)


# ---- Dockerfile ----------------------------------------------------------------------------

def dockerfile_instructions() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def bin_names(manifest: str) -> list[str]:
    return [b["name"] for b in tomllib.loads((ROOT / manifest).read_text()).get("bin", [])]


def test_dockerfile_copies_only_what_exists_and_builds_the_cargo_binaries():
    lines = dockerfile_instructions()
    ignored = [l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    copies = [l for l in lines if l.startswith("COPY ") and "--from=" not in l]
    assert copies
    sources = []
    for line in copies:
        parts = [p for p in line.split()[1:] if not p.startswith("--")]
        sources += parts[:-1]
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert src.rstrip("/") not in ignored, f"{src} is excluded by .dockerignore"
    # Every workspace member must be in the context (cargo reads all manifests).
    for member in CARGO["workspace"]["members"]:
        assert member in sources, f"workspace member {member} is not copied"
    csi_bins, op_bins = bin_names("csi-driver/Cargo.toml"), bin_names("operator/Cargo.toml")
    assert csi_bins == ["studiodrive-csi"] and op_bins == ["studiodrive-operator"]
    build = next(l for l in lines if "cargo build" in l)
    packages = re.findall(r"-p (\S+)", build.split("&&")[0])
    manifests = {tomllib.loads((ROOT / m / "Cargo.toml").read_text())["package"]["name"]
                 for m in CARGO["workspace"]["members"]}
    assert set(packages) == {"drive-csi", "drive-operator"} and set(packages) <= manifests
    produced = set(re.findall(r"target/release/(\S+)", build))
    assert produced == set(csi_bins + op_bins)
    final = next(l for l in lines if l.startswith("COPY --from=build"))
    assert all(f"/out/{b}" in final for b in csi_bins + op_bins)
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) == 2
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), re.M))
    assert args["RUST_VERSION"] == CARGO["workspace"]["package"]["rust-version"]
    assert args["DEBIAN_RELEASE"] == "bookworm"
    assert any(l.startswith("USER 65532") for l in lines)
    assert any("fuse3" in l and "ca-certificates" in l for l in lines)


def test_chart_commands_name_the_image_binaries(default_objects):
    entry = next(l for l in dockerfile_instructions() if l.startswith("ENTRYPOINT"))
    assert "studiodrive-operator" in entry  # GC Jobs set args only: `gc --policy ...`
    binaries = set(bin_names("csi-driver/Cargo.toml") + bin_names("operator/Cargo.toml"))
    used = set()
    for w in workloads(default_objects):
        for c in containers(w):
            if "studiodrive/" in c["image"]:
                assert c["command"][:2] == ["/usr/bin/tini", "--"]
                used.add(c["command"][2])
    assert used == binaries


# ---- security scan -------------------------------------------------------------------------

# checkov findings on the default render that are accepted, with the reason.
# (check id, "Kind.name") -> reason. Anything else failing fails the test, and so does an
# accepted finding that no longer occurs (the list stays honest).
ACCEPTED_FINDINGS: dict[tuple[str, str], str] = {}
_NODE = "DaemonSet.studiodrive-csi-node"
_RELAY = "Deployment.studiodrive-relay"
_WORKLOADS = (_NODE, "Deployment.studiodrive-csi-controller", "Deployment.studiodrive-operator")
for _w in _WORKLOADS:
    ACCEPTED_FINDINGS.update({
        ("CKV_K8S_11", _w): "no CPU limits on purpose: CFS throttling stalls FUSE and reconcile latency; requests are set",
        ("CKV_K8S_43", _w): "pinned by immutable tag (appVersion, sidecar versions); image.digest pins by digest where required",
        ("CKV_K8S_15", _w): "IfNotPresent with pinned tags: Always adds a registry round-trip to every node-plugin restart",
        ("CKV_K8S_38", _w): "each component calls the API (TokenReviews, sidecars, operator): the token is needed",
        ("CKV_K8S_35", _w): "the binaries read the metadata URL from STUDIODRIVE_METADATA_URL only; the node plugin hands "
                            "it to mount processes as environment, not argv (docs/security.md)",
        (f"CKV2_K8S_6", f"Pod.{_w.split('.', 1)[1]}"): "NetworkPolicy depends on where the database and object store live; "
                                                       "left to the cluster admin (docs/install.md)",
    })
for _w in _WORKLOADS[:2]:
    ACCEPTED_FINDINGS.update({
        ("CKV_K8S_8", _w): "upstream CSI sidecars have no probe endpoints; the plugin is probed through the livenessprobe sidecar",
        ("CKV_K8S_9", _w): "a CSI plugin has no readiness: kubelet and the sidecars use the socket and Probe",
    })
# The relay: no API token (CKV_K8S_38 passes), probes on its metrics port (CKV_K8S_8, 9 pass).
ACCEPTED_FINDINGS.update({
    ("CKV_K8S_11", _RELAY): "no CPU limit, like the other components: a throttled relay delays every sink; requests are set",
    ("CKV_K8S_43", _RELAY): "pinned by immutable tag (appVersion); image.digest pins by digest where required",
    ("CKV_K8S_15", _RELAY): "IfNotPresent with a pinned tag, as for the other components",
    ("CKV_K8S_35", _RELAY): "studiodrive-csi reads the metadata URL from STUDIODRIVE_METADATA_URL only (docs/security.md)",
    ("CKV2_K8S_6", "Pod.studiodrive-relay"): "NetworkPolicy depends on where the database and the sinks (NATS, webhooks) "
                                             "live; left to the cluster admin (docs/install.md)",
})
# The API: probes on /healthz (CKV_K8S_8, 9 pass); its token is its identity for TokenReviews.
_API = "Deployment.studiodrive-api"
ACCEPTED_FINDINGS.update({
    ("CKV_K8S_11", _API): "no CPU limit, like the other components: a throttled API answers every caller late; "
                          "requests are set",
    ("CKV_K8S_43", _API): "pinned by immutable tag (appVersion); image.digest pins by digest where required",
    ("CKV_K8S_15", _API): "IfNotPresent with a pinned tag, as for the other components",
    ("CKV_K8S_35", _API): "studiodrive-csi reads the metadata URL from STUDIODRIVE_METADATA_URL only (docs/security.md)",
    ("CKV_K8S_38", _API): "the API verifies callers with TokenReviews: its own token is needed (create tokenreviews, "
                          "nothing else)",
    ("CKV2_K8S_6", "Pod.studiodrive-api"): "NetworkPolicy depends on where the callers and the database live; left to "
                                           "the cluster admin (docs/install.md)",
})
ACCEPTED_FINDINGS.update({
    ("CKV_K8S_16", _NODE): "the node plugin must be privileged: FUSE mounts into kubelet's pod dirs with Bidirectional propagation",
    ("CKV_K8S_20", _NODE): "privileged implies privilege escalation (the API refuses privileged with allowPrivilegeEscalation false)",
    ("CKV_K8S_23", _NODE): "the node plugin and its sidecars run as root: /dev/fuse, mount(2), kubelet's root-owned plugin dirs",
    ("CKV_K8S_40", _NODE): "root on purpose (see CKV_K8S_23)",
    ("CKV_K8S_28", _NODE): "privileged containers hold every capability, NET_RAW included; the sidecars drop ALL",
    ("CKV_K8S_37", _NODE): "privileged containers hold every capability; the sidecars drop ALL",
    ("CKV2_K8S_5", "ClusterRoleBinding.studiodrive-operator-keys"):
        "the operator reads Workspace KEK Secrets and EventSink credentials (labelled ones only) by name "
        "(get only, no list/watch) in tenant namespaces; encryption.keySecretNamespaces narrows it to Roles",
})


def checkov_bin() -> str:
    path = os.environ.get("CHECKOV", str(ROOT / ".venv-chart/checkov/bin/checkov"))
    if not Path(path).exists():
        pytest.fail(f"checkov not found at {path}: run scripts/test-chart.sh (it installs it)")
    return path


def test_checkov_finds_nothing_beyond_the_accepted_findings(default_objects, tmp_path):
    manifest = tmp_path / "studiodrive.yaml"
    manifest.write_text(yaml.safe_dump_all(default_objects + chartlib.crd_objects(), sort_keys=False))
    proc = subprocess.run([checkov_bin(), "-f", str(manifest), "--framework", "kubernetes", "-o", "json",
                           "--quiet", "--compact", "--skip-download"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100
    found = set()
    for f in report["results"]["failed_checks"]:
        parts = f["resource"].split(".")
        found.add((f["check_id"], f"{parts[0]}.{parts[2] if len(parts) > 2 else parts[1]}"))
    unexpected = sorted(found - ACCEPTED_FINDINGS.keys())
    stale = sorted(ACCEPTED_FINDINGS.keys() - found)
    assert not unexpected, f"new checkov findings (fix them or accept them with a reason): {unexpected}"
    assert not stale, f"accepted findings that no longer occur (remove them): {stale}"
