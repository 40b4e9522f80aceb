#!/usr/bin/env bash
# End-to-end suite of Studio Drive on a kind cluster: builds the image, installs PostgreSQL,
# MinIO, the snapshot controller and the Helm chart, then writes frames through a PVC,
# verifies them from another pod, snapshots and restores the claim, and waits for a
# LifecyclePolicy pass. See e2e/README.md.
#
# Needs kind, kubectl, helm, git (kubectl apply -k of a remote kustomization) and a
# container engine (docker, or podman) with a reachable daemon. Without them it prints what
# is missing and exits 0 (SKIPPED), or 1 with E2E_REQUIRE=1.
# The placeholders of e2e/manifests are read by render() through ${!name}:
# shellcheck disable=SC2034
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
E2E_DIR="$REPO_ROOT/e2e"
MANIFESTS="$E2E_DIR/manifests"

# ---- knobs (README.md "Environment") ------------------------------------------------------
E2E_REQUIRE=${E2E_REQUIRE:-0}
E2E_KEEP_CLUSTER=${E2E_KEEP_CLUSTER:-0}
E2E_CLUSTER_NAME=${E2E_CLUSTER_NAME:-studiodrive-e2e}
E2E_CONTAINER_ENGINE=${E2E_CONTAINER_ENGINE:-}
E2E_KIND_NODE_IMAGE=${E2E_KIND_NODE_IMAGE:-}
E2E_SKIP_BUILD=${E2E_SKIP_BUILD:-0}
E2E_TIMEOUT=${E2E_TIMEOUT:-300}
E2E_LIFECYCLE_TIMEOUT=${E2E_LIFECYCLE_TIMEOUT:-180}
E2E_SNAPSHOTTER_VERSION=${E2E_SNAPSHOTTER_VERSION:-v8.2.0}
E2E_FRAMES=${E2E_FRAMES:-48}
E2E_FRAME_KB=${E2E_FRAME_KB:-1024}
E2E_POSTGRES_IMAGE=${E2E_POSTGRES_IMAGE:-postgres:15}
E2E_MINIO_IMAGE=${E2E_MINIO_IMAGE:-quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z}
E2E_MC_IMAGE=${E2E_MC_IMAGE:-quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z}
E2E_BUSYBOX_IMAGE=${E2E_BUSYBOX_IMAGE:-busybox:1.36}
# Throwaway credentials of the in-cluster services (letters, digits and "-": they go into URLs).
E2E_PG_PASSWORD=${E2E_PG_PASSWORD:-e2ePostgresPassw0rd}
E2E_S3_ACCESS_KEY=${E2E_S3_ACCESS_KEY:-studiodrive-e2e}
E2E_S3_SECRET_KEY=${E2E_S3_SECRET_KEY:-e2eMinioSecretKey0}

# ---- fixed names (the chart's, for release "studiodrive": see charts/studiodrive) ---------
IMAGE_REPOSITORY=ghcr.io/studiodrive/studiodrive
BASE_IMAGE="$IMAGE_REPOSITORY:e2e"         # docker build of the repository's Dockerfile
IMAGE_TAG=e2e-gc-creds                     # BASE_IMAGE + e2e/image (GC Job S3 credentials)
IMAGE="$IMAGE_REPOSITORY:$IMAGE_TAG"
RELEASE=studiodrive
SYSTEM_NS=studiodrive-system               # the chart (docs/install.md)
E2E_NS=studiodrive-e2e                     # PostgreSQL and MinIO
WORK_NS=e2e-render                         # Workspace, claims, Jobs
WORKSPACE=shot010                          # store name e2e-render.shot010
S3_BUCKET=studiodrive-e2e
STORAGE_CLASS=studiodrive                  # storageClass.name
SNAPSHOT_CLASS=studiodrive                 # volumeSnapshotClass.name
OPERATOR_DEPLOY=studiodrive-operator
CONTROLLER_DEPLOY=studiodrive-csi-controller
NODE_DS=studiodrive-csi-node
POLICY=studiodrive-e2e
FRAMES=$E2E_FRAMES
FRAME_KB=$E2E_FRAME_KB
POSTGRES_IMAGE=$E2E_POSTGRES_IMAGE
MINIO_IMAGE=$E2E_MINIO_IMAGE
MC_IMAGE=$E2E_MC_IMAGE
BUSYBOX_IMAGE=$E2E_BUSYBOX_IMAGE
# Job-specific placeholders of verify-job.yaml, set before each render.
JOB_NAME=""
CLAIM_NAME=""
AVOID_NODE=""
RENDER_NODE=""
# The ${NAME} placeholders that render() substitutes in e2e/manifests/*.yaml.
TEMPLATE_VARS=(E2E_NS WORK_NS WORKSPACE S3_BUCKET STORAGE_CLASS SNAPSHOT_CLASS
  IMAGE_REPOSITORY IMAGE_TAG FRAMES FRAME_KB POSTGRES_IMAGE MINIO_IMAGE MC_IMAGE
  BUSYBOX_IMAGE JOB_NAME CLAIM_NAME AVOID_NODE)

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
err() { printf '[e2e %s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
step() { printf '\n[e2e %s] ==== %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ---- 0. tools ------------------------------------------------------------------------------
# Whether engine $1 answers `info` (a client without a reachable daemon does not), within 30s
# when `timeout` exists (a remote daemon that does not answer must not hang the check).
engine_info() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 30 "$1" info >/dev/null 2>&1
  else
    "$1" info >/dev/null 2>&1
  fi
}

# Checks every tool; prints what is missing and skips (exit 0), or fails with E2E_REQUIRE=1.
check_tools() {
  local missing=() tool
  for tool in kind kubectl helm git; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (not installed)")
  done
  local engines=(docker podman)
  if [[ -n $E2E_CONTAINER_ENGINE ]]; then
    engines=("$E2E_CONTAINER_ENGINE")
  fi
  ENGINE=""
  local engine_notes=()
  for tool in "${engines[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      engine_notes+=("$tool: not installed")
    elif ! engine_info "$tool"; then
      engine_notes+=("$tool: installed, but '$tool info' fails (no daemon/socket reachable)")
    else
      ENGINE=$tool
      break
    fi
  done
  if [[ -z $ENGINE ]]; then
    local note joined=""
    for note in "${engine_notes[@]}"; do
      joined+="${joined:+; }$note"
    done
    missing+=("a container engine ($joined)")
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  local m
  if [[ $E2E_REQUIRE == 1 ]]; then
    for m in "${missing[@]}"; do
      printf 'e2e: missing: %s\n' "$m" >&2
    done
    err "the e2e suite cannot run and E2E_REQUIRE=1: failing"
    exit 1
  fi
  for m in "${missing[@]}"; do
    printf 'e2e: missing: %s\n' "$m"
  done
  printf 'e2e: the end-to-end suite is SKIPPED (needs kind, kubectl, helm, git and docker or podman; E2E_REQUIRE=1 makes this an error)\n'
  exit 0
}

# ---- helpers -------------------------------------------------------------------------------
# Prints manifest $1 with each ${NAME} of TEMPLATE_VARS replaced by its value (nothing else:
# the $vars of the Jobs' shell scripts stay as they are).
render() {
  local text name
  text=$(<"$1")
  for name in "${TEMPLATE_VARS[@]}"; do
    text=${text//"\${${name}}"/"${!name}"}
  done
  printf '%s\n' "$text"
}

apply_tpl() {
  render "$MANIFESTS/$1" | kubectl apply -f -
}

# Creates or updates a generic Secret: apply_secret NAMESPACE NAME --from-literal=... ...
apply_secret() {
  local ns=$1 name=$2
  shift 2
  kubectl -n "$ns" create secret generic "$name" "$@" --dry-run=client -o yaml | kubectl apply -f -
}

ensure_namespace() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f -
}

# Waits until Job $2 in namespace $1 completes (0) or fails (1), at most $3 seconds (a bounded
# poll: `kubectl wait` takes one condition, and a failed Job must not wait for the timeout).
wait_job() {
  local ns=$1 job=$2 timeout=${3:-$E2E_TIMEOUT} conds deadline
  deadline=$((SECONDS + timeout))
  log "waiting for job $ns/$job (at most ${timeout}s)"
  while :; do
    conds=$(kubectl -n "$ns" get job "$job" \
      -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
    case " $conds " in
      *" Complete "*)
        kubectl -n "$ns" logs "job/$job" --tail=20 || true
        log "job $ns/$job succeeded"
        return 0
        ;;
      *" Failed "*)
        kubectl -n "$ns" logs "job/$job" --tail=100 >&2 || true
        err "job $ns/$job failed"
        return 1
        ;;
    esac
    if ((SECONDS >= deadline)); then
      err "job $ns/$job did not finish within ${timeout}s"
      return 1
    fi
    sleep 3
  done
}

# ---- failure diagnostics and cleanup ----------------------------------------------------------
CLUSTER_TOUCHED=0
CLUSTER_REUSED=0
WORK_DIR=""

diagnostics() {
  set +e
  echo
  echo "================ e2e diagnostics ================"
  echo "---- kubectl get all -A"
  kubectl get all -A -o wide
  echo "---- claims, volumes, snapshots"
  kubectl get pvc -A -o wide
  kubectl get pv -o wide
  kubectl get volumesnapshot,volumesnapshotcontent -A
  kubectl get volumesnapshotclass,storageclass,csidriver
  echo "---- Studio Drive resources"
  kubectl get workspaces.studiodrive.dev -A -o yaml
  kubectl get lifecyclepolicies.studiodrive.dev -o yaml
  echo "---- events (last 80)"
  kubectl get events -A --sort-by=.lastTimestamp | tail -n 80
  echo "---- pods that are not running and ready, or failed"
  local ns pod ready status
  kubectl get pods -A --no-headers 2>/dev/null | while read -r ns pod ready status _; do
    if [[ $status == Completed ]]; then
      continue
    fi
    if [[ $status == Running && ${ready%/*} == "${ready#*/}" ]]; then
      continue
    fi
    echo "-------- describe pod $ns/$pod ($status, $ready)"
    kubectl -n "$ns" describe pod "$pod"
  done
  echo "---- logs of the Studio Drive pods"
  for pod in $(kubectl -n "$SYSTEM_NS" get pods -o name 2>/dev/null); do
    echo "-------- $SYSTEM_NS/$pod"
    kubectl -n "$SYSTEM_NS" logs "$pod" --all-containers --prefix --tail=200
    kubectl -n "$SYSTEM_NS" logs "$pod" --all-containers --prefix --tail=50 --previous 2>/dev/null
  done
  echo "---- logs of the e2e Jobs"
  for pod in $(kubectl -n "$WORK_NS" get pods -o name 2>/dev/null); do
    echo "-------- $WORK_NS/$pod"
    kubectl -n "$WORK_NS" logs "$pod" --all-containers --prefix --tail=100
  done
  echo "================ end of diagnostics ================"
}

on_exit() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if ((rc != 0)) && ((CLUSTER_TOUCHED)); then
    diagnostics >&2
  fi
  if ((CLUSTER_TOUCHED)); then
    if [[ $E2E_KEEP_CLUSTER == 1 ]]; then
      log "keeping kind cluster $E2E_CLUSTER_NAME (E2E_KEEP_CLUSTER=1): kind export kubeconfig --name $E2E_CLUSTER_NAME"
    else
      log "deleting kind cluster $E2E_CLUSTER_NAME"
      kind delete cluster --name "$E2E_CLUSTER_NAME" >/dev/null 2>&1
    fi
  fi
  [[ -n $WORK_DIR ]] && rm -rf "$WORK_DIR"
  if ((rc == 0)); then
    log "e2e suite PASSED"
  else
    err "e2e suite FAILED (exit $rc)"
  fi
  exit "$rc"
}

# ---- 1. image and cluster --------------------------------------------------------------------
build_image() {
  step "1. image $IMAGE"
  if [[ $E2E_SKIP_BUILD == 1 ]]; then
    log "E2E_SKIP_BUILD=1: using the existing $BASE_IMAGE"
  else
    log "building $BASE_IMAGE from $REPO_ROOT/Dockerfile"
    # BuildKit: the Dockerfile uses cache mounts (docs/install.md); Docker 23+ defaults to it.
    (cd "$REPO_ROOT" && DOCKER_BUILDKIT=1 "$ENGINE" build -t "$BASE_IMAGE" .)
  fi
  local ctx="$WORK_DIR/image"
  mkdir -p "$ctx"
  cp "$E2E_DIR/image/Dockerfile" "$ctx/Dockerfile"
  printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
    "$E2E_S3_ACCESS_KEY" "$E2E_S3_SECRET_KEY" >"$ctx/aws-credentials"
  chmod 0644 "$ctx/aws-credentials"
  DOCKER_BUILDKIT=1 "$ENGINE" build -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" "$ctx"
}

create_cluster() {
  step "1. kind cluster $E2E_CLUSTER_NAME"
  if [[ $ENGINE == podman ]]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
  export KUBECONFIG="$WORK_DIR/kubeconfig"
  local exists=0
  if kind get clusters 2>/dev/null | grep -qx "$E2E_CLUSTER_NAME"; then
    exists=1
  fi
  CLUSTER_TOUCHED=1
  if ((exists)) && [[ $E2E_KEEP_CLUSTER == 1 ]]; then
    log "reusing the existing cluster (E2E_KEEP_CLUSTER=1)"
    CLUSTER_REUSED=1
    kind export kubeconfig --name "$E2E_CLUSTER_NAME" --kubeconfig "$KUBECONFIG"
  else
    if ((exists)); then
      log "deleting a leftover cluster of the same name"
      kind delete cluster --name "$E2E_CLUSTER_NAME"
    fi
    local args=(create cluster --name "$E2E_CLUSTER_NAME" --config "$MANIFESTS/kind-config.yaml"
      --kubeconfig "$KUBECONFIG" --wait 180s)
    if [[ -n $E2E_KIND_NODE_IMAGE ]]; then
      args+=(--image "$E2E_KIND_NODE_IMAGE")
    fi
    kind "${args[@]}"
  fi
  kubectl wait --for=condition=Ready nodes --all --timeout="${E2E_TIMEOUT}s"
  kubectl version
  # The node plugin mounts FUSE: every node needs /dev/fuse (the host's fuse module).
  local node
  for node in $(kind get nodes --name "$E2E_CLUSTER_NAME"); do
    if ! "$ENGINE" exec "$node" test -c /dev/fuse; then
      err "kind node $node has no /dev/fuse: load the fuse module on the host (sudo modprobe fuse)"
      return 1
    fi
  done
  log "loading $IMAGE into the kind nodes"
  if [[ $ENGINE == docker ]]; then
    kind load docker-image "$IMAGE" --name "$E2E_CLUSTER_NAME"
  else
    "$ENGINE" save -o "$WORK_DIR/image.tar" "$IMAGE"
    kind load image-archive "$WORK_DIR/image.tar" --name "$E2E_CLUSTER_NAME"
  fi
}

# ---- 2. prerequisites ------------------------------------------------------------------------
install_prerequisites() {
  step "2. prerequisites: PostgreSQL, MinIO, VolumeSnapshot CRDs and snapshot-controller"
  ensure_namespace "$E2E_NS"
  apply_secret "$E2E_NS" postgres --from-literal=password="$E2E_PG_PASSWORD"
  apply_secret "$E2E_NS" minio \
    --from-literal=rootUser="$E2E_S3_ACCESS_KEY" \
    --from-literal=rootPassword="$E2E_S3_SECRET_KEY" \
    --from-literal=mcHost="http://$E2E_S3_ACCESS_KEY:$E2E_S3_SECRET_KEY@minio.$E2E_NS.svc.cluster.local:9000"
  apply_tpl postgres.yaml
  apply_tpl minio.yaml

  local base=github.com/kubernetes-csi/external-snapshotter
  log "VolumeSnapshot CRDs and snapshot-controller $E2E_SNAPSHOTTER_VERSION"
  kubectl apply -k "$base/client/config/crd?ref=$E2E_SNAPSHOTTER_VERSION"
  kubectl wait --for=condition=Established --timeout=60s \
    crd/volumesnapshotclasses.snapshot.storage.k8s.io \
    crd/volumesnapshotcontents.snapshot.storage.k8s.io \
    crd/volumesnapshots.snapshot.storage.k8s.io
  kubectl apply -k "$base/deploy/kubernetes/snapshot-controller?ref=$E2E_SNAPSHOTTER_VERSION"

  kubectl -n "$E2E_NS" rollout status deployment/postgres --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$E2E_NS" rollout status deployment/minio --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$E2E_NS" delete job minio-create-bucket --ignore-not-found --wait=true
  apply_tpl minio-bucket-job.yaml
  wait_job "$E2E_NS" minio-create-bucket
  kubectl -n kube-system rollout status deployment/snapshot-controller --timeout="${E2E_TIMEOUT}s"
}

# ---- 3. the chart ----------------------------------------------------------------------------
install_chart() {
  step "3. helm install $RELEASE (namespace $SYSTEM_NS)"
  ensure_namespace "$SYSTEM_NS"
  apply_secret "$SYSTEM_NS" studiodrive-metadata \
    --from-literal=url="postgresql://studiodrive:$E2E_PG_PASSWORD@postgres.$E2E_NS.svc.cluster.local:5432/studiodrive"
  apply_secret "$SYSTEM_NS" studiodrive-s3 \
    --from-file=credentials="$WORK_DIR/image/aws-credentials"
  # Helm installs crds/ on the first install only (docs/install.md, "Upgrade"): apply them
  # so that a kept cluster gets the current ones too.
  kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/charts/studiodrive/crds/"
  kubectl wait --for=condition=Established --timeout=60s \
    crd/workspaces.studiodrive.dev crd/snapshots.studiodrive.dev \
    crd/shares.studiodrive.dev crd/lifecyclepolicies.studiodrive.dev
  render "$MANIFESTS/values.yaml" >"$WORK_DIR/values.yaml"
  helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/studiodrive" \
    --namespace "$SYSTEM_NS" -f "$WORK_DIR/values.yaml"
  if ((CLUSTER_REUSED)); then
    # Same image tag, maybe new content (kind load replaced it): restart onto it.
    kubectl -n "$SYSTEM_NS" rollout restart "deployment/$OPERATOR_DEPLOY" \
      "deployment/$CONTROLLER_DEPLOY" "daemonset/$NODE_DS"
  fi
  kubectl -n "$SYSTEM_NS" rollout status "deployment/$OPERATOR_DEPLOY" --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$SYSTEM_NS" rollout status "deployment/$CONTROLLER_DEPLOY" --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$SYSTEM_NS" rollout status "daemonset/$NODE_DS" --timeout="${E2E_TIMEOUT}s"
  kubectl get "storageclass/$STORAGE_CLASS" "volumesnapshotclass/$SNAPSHOT_CLASS" csidriver/csi.studiodrive.dev
  kubectl -n "$SYSTEM_NS" get deployment,daemonset,pods -o wide
}

# ---- 4. workspace, claim, render, verify -----------------------------------------------------
render_and_verify() {
  step "4. Workspace $WORK_NS/$WORKSPACE, claim, render and verify"
  kubectl delete "lifecyclepolicy.studiodrive.dev/$POLICY" --ignore-not-found --wait=true
  if kubectl get namespace "$WORK_NS" >/dev/null 2>&1; then
    log "deleting namespace $WORK_NS of an earlier run"
    kubectl delete namespace "$WORK_NS" --wait=true --timeout="${E2E_TIMEOUT}s"
  fi
  apply_tpl workspace.yaml
  kubectl -n "$WORK_NS" wait --for=condition=Ready "workspace.studiodrive.dev/$WORKSPACE" \
    --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$WORK_NS" get "workspace.studiodrive.dev/$WORKSPACE" -o wide

  apply_tpl pvc.yaml
  kubectl -n "$WORK_NS" wait --for=jsonpath='{.status.phase}'=Bound pvc/frames \
    --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$WORK_NS" get pvc/frames -o wide

  apply_tpl render-job.yaml
  wait_job "$WORK_NS" render-shot010
  local render_node
  render_node=$(kubectl -n "$WORK_NS" get pods -l job-name=render-shot010 \
    -o jsonpath='{.items[0].spec.nodeName}')
  log "frames written on node $render_node; verifying from another pod (another node if any)"

  JOB_NAME=verify-frames CLAIM_NAME=frames AVOID_NODE=$render_node
  apply_tpl verify-job.yaml
  wait_job "$WORK_NS" verify-frames
  RENDER_NODE=$render_node
}

# ---- 5. snapshot and restore -----------------------------------------------------------------
snapshot_and_restore() {
  step "5. VolumeSnapshot of the claim, restore, verify"
  apply_tpl volumesnapshot.yaml
  kubectl -n "$WORK_NS" wait --for=jsonpath='{.status.readyToUse}'=true \
    volumesnapshot/frames-snap --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$WORK_NS" get volumesnapshot/frames-snap -o wide

  apply_tpl pvc-restore.yaml
  kubectl -n "$WORK_NS" wait --for=jsonpath='{.status.phase}'=Bound pvc/frames-restored \
    --timeout="${E2E_TIMEOUT}s"
  kubectl -n "$WORK_NS" get pvc/frames-restored -o wide

  JOB_NAME=verify-restored CLAIM_NAME=frames-restored AVOID_NODE=$RENDER_NODE
  apply_tpl verify-job.yaml
  wait_job "$WORK_NS" verify-restored
}

# ---- 6. lifecycle policy ---------------------------------------------------------------------
lifecycle_pass() {
  step "6. LifecyclePolicy $POLICY (every minute): wait for a pass"
  apply_tpl lifecyclepolicy.yaml
  local deadline=$((SECONDS + E2E_LIFECYCLE_TIMEOUT)) phase result last_result
  log "waiting for a successful pass (at most ${E2E_LIFECYCLE_TIMEOUT}s)"
  while :; do
    phase=$(kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o jsonpath='{.status.phase}')
    result=$(kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o jsonpath='{.status.lastRun.result}')
    last_result=$(kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o jsonpath='{.status.lastResult}')
    if [[ $result == Succeeded || -n $last_result ]]; then
      log "pass finished: phase=$phase lastRun.result=$result"
      kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o wide
      kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o jsonpath='{.status}'
      echo
      return 0
    fi
    if [[ $result == Failed || $phase == Invalid ]]; then
      err "LifecyclePolicy $POLICY: phase=$phase lastRun.result=$result"
      kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o yaml >&2
      kubectl -n "$SYSTEM_NS" get jobs -l app.kubernetes.io/name=studiodrive-gc >&2
      kubectl -n "$SYSTEM_NS" logs -l app.kubernetes.io/name=studiodrive-gc --tail=100 --prefix >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      err "no successful pass of LifecyclePolicy $POLICY within ${E2E_LIFECYCLE_TIMEOUT}s (phase=$phase lastRun.result=$result)"
      kubectl get "lifecyclepolicy.studiodrive.dev/$POLICY" -o yaml >&2
      return 1
    fi
    sleep 5
  done
}

main() {
  check_tools
  log "container engine: $ENGINE; cluster: $E2E_CLUSTER_NAME; image: $IMAGE"
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/studiodrive-e2e.XXXXXX")
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  build_image
  create_cluster
  install_prerequisites
  install_chart
  render_and_verify
  snapshot_and_restore
  lifecycle_pass
}

# Run unless sourced (sourcing gives the functions, e.g. render, to a test harness).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
