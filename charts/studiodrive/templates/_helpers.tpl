{{/* Chart name. */}}
{{- define "studiodrive.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified prefix of object names: the release name when it contains the chart name. */}}
{{- define "studiodrive.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "studiodrive.operator.name" -}}{{ include "studiodrive.fullname" . }}-operator{{- end }}
{{- define "studiodrive.controller.name" -}}{{ include "studiodrive.fullname" . }}-csi-controller{{- end }}
{{- define "studiodrive.node.name" -}}{{ include "studiodrive.fullname" . }}-csi-node{{- end }}
{{- define "studiodrive.relay.name" -}}{{ include "studiodrive.fullname" . }}-relay{{- end }}
{{- define "studiodrive.api.name" -}}{{ include "studiodrive.fullname" . }}-api{{- end }}

{{/* The CSI driver name, compiled into studiodrive-csi (csi-driver/src/csi/mod.rs DRIVER_NAME). */}}
{{- define "studiodrive.driverName" -}}csi.studiodrive.dev{{- end }}

{{/* Labels on every object. */}}
{{- define "studiodrive.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "studiodrive.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: studiodrive
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "studiodrive.selectorLabels" -}}
app.kubernetes.io/name: {{ include "studiodrive.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "studiodrive.componentLabels" -}}
{{ include "studiodrive.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The Studio Drive image, pinned to the chart's appVersion unless tag or digest is set. */}}
{{- define "studiodrive.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The block store URL for STUDIODRIVE_STORE. */}}
{{- define "studiodrive.storeUrl" -}}
{{- if eq .Values.objectStore.type "s3" -}}
{{- $prefix := trimAll "/" .Values.objectStore.s3.prefix -}}
s3://{{ .Values.objectStore.s3.bucket }}{{ if $prefix }}/{{ $prefix }}{{ end }}
{{- else -}}
file://{{ .Values.objectStore.file.path }}
{{- end -}}
{{- end }}

{{/* Where the S3 shared-credentials Secret (objectStore.s3.credentialsSecret) is mounted. The
     operator's GC and preload Jobs mount it at the same path (operator/src/gc_job.rs). */}}
{{- define "studiodrive.s3Credentials.dir" -}}/etc/studiodrive/s3{{- end }}

{{/* Whether the S3 credentials Secret is mounted ("true" or empty). */}}
{{- define "studiodrive.s3Credentials.enabled" -}}
{{- if and (eq .Values.objectStore.type "s3") .Values.objectStore.s3.credentialsSecret }}true{{ end }}
{{- end }}

{{- define "studiodrive.s3Credentials.volumeMount" -}}
- name: s3-credentials
  mountPath: {{ include "studiodrive.s3Credentials.dir" . }}
  readOnly: true
{{- end }}

{{/* The S3 credentials volume: (dict "ctx" $ "mode" "0400"). The mode is the reader's: 0400
     for a root container, 0440 for one that reads it through the pod's fsGroup. */}}
{{- define "studiodrive.s3Credentials.volume" -}}
- name: s3-credentials
  secret:
    secretName: {{ .ctx.Values.objectStore.s3.credentialsSecret }}
    defaultMode: {{ .mode }}
{{- end }}

{{/* The default block store of a process that opens it (studiodrive-csi --store and its S3
     flags, as environment): STUDIODRIVE_STORE always, the S3 settings with type s3. */}}
{{- define "studiodrive.objectStoreEnv" -}}
- name: STUDIODRIVE_STORE
  value: {{ include "studiodrive.storeUrl" . | quote }}
{{- if eq .Values.objectStore.type "s3" }}
{{- with .Values.objectStore.s3.endpoint }}
- name: STUDIODRIVE_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.s3.region }}
- name: STUDIODRIVE_S3_REGION
  value: {{ . | quote }}
{{- end }}
- name: STUDIODRIVE_S3_MAX_ATTEMPTS
  value: {{ .Values.objectStore.s3.maxAttempts | int | quote }}
{{- if include "studiodrive.s3Credentials.enabled" . }}
- name: STUDIODRIVE_S3_CREDENTIALS_FILE
  value: {{ include "studiodrive.s3Credentials.dir" . }}/{{ .Values.objectStore.s3.credentialsKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* Checks that the values hang together (the schema covers types and names). */}}
{{- define "studiodrive.validate" -}}
{{- if and (eq .Values.objectStore.type "s3") (not .Values.objectStore.s3.bucket) }}
{{- fail "objectStore.s3.bucket is required with objectStore.type=s3" }}
{{- end }}
{{- if eq .Values.objectStore.type "file" }}
{{- if not (or .Values.objectStore.file.existingClaim .Values.objectStore.file.hostPath) }}
{{- fail "objectStore.type=file needs objectStore.file.existingClaim or objectStore.file.hostPath" }}
{{- end }}
{{- if and .Values.objectStore.file.existingClaim .Values.objectStore.file.hostPath }}
{{- fail "set only one of objectStore.file.existingClaim and objectStore.file.hostPath" }}
{{- end }}
{{- end }}
{{- if not .Values.metadata.existingSecret }}
{{- fail "metadata.existingSecret must name the Secret holding the metadata store URL" }}
{{- end }}
{{- if .Values.api.enabled }}
{{- if and (eq .Values.api.tls.mode "certManager") (not .Values.api.tls.issuerRef.name) }}
{{- fail "api.tls.mode=certManager needs api.tls.issuerRef.name (a cert-manager Issuer or ClusterIssuer)" }}
{{- end }}
{{- if and (eq .Values.api.tls.mode "existingSecret") (not .Values.api.tls.secretName) }}
{{- fail "api.tls.mode=existingSecret needs api.tls.secretName (a Secret with tls.crt and tls.key)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment of every process that talks to the metadata store. */}}
{{- define "studiodrive.metadataEnv" -}}
- name: STUDIODRIVE_METADATA_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.metadata.existingSecret }}
      key: {{ .Values.metadata.secretKey }}
- name: STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS
  value: {{ .Values.metadata.statementTimeoutMs | int | quote }}
{{- end }}

{{/* The container security context of the unprivileged containers. */}}
{{- define "studiodrive.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* A CSI sidecar container: (dict "ctx" $ "name" "csi-provisioner" "sidecar" .Values.sidecars.provisioner "args" (list ...)). */}}
{{- define "studiodrive.sidecar" -}}
- name: {{ .name }}
  image: {{ .sidecar.image }}
  imagePullPolicy: IfNotPresent
  args:
    {{- toYaml .args | nindent 4 }}
  {{- with .env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .sidecar.resources | nindent 4 }}
  securityContext:
    {{- if .root }}
    {{- /* Node sidecars: the plugin's socket and kubelet's registration directory are root's. */}}
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsUser: 0
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
    {{- else }}
    {{- include "studiodrive.restrictedSecurityContext" . | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
    {{- with .extraMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The Secret holding the sink secrets key: events.sinkSecretsKey.existingSecret, or the
     one sink-secrets-key.yaml generates. */}}
{{- define "studiodrive.sinkSecretsKey.secretName" -}}
{{- .Values.events.sinkSecretsKey.existingSecret | default (printf "%s-sink-secrets-key" (include "studiodrive.fullname" .)) }}
{{- end }}

{{/* Where the operator and the relay read the sink secrets key (--sink-secret-key-file). */}}
{{- define "studiodrive.sinkSecretsKey.dir" -}}/etc/studiodrive/sink-secrets-key{{- end }}
{{- define "studiodrive.sinkSecretsKey.file" -}}{{ include "studiodrive.sinkSecretsKey.dir" . }}/key{{- end }}

{{- define "studiodrive.sinkSecretsKey.volumeMount" -}}
- name: sink-secrets-key
  mountPath: {{ include "studiodrive.sinkSecretsKey.dir" . }}
  readOnly: true
{{- end }}

{{/* Only the key, as the file "key"; 0440 with the pod's fsGroup 65532 as its group: the
     containers run as 65532 and secret files belong to root (as the GC Jobs' S3 credentials). */}}
{{- define "studiodrive.sinkSecretsKey.volume" -}}
- name: sink-secrets-key
  secret:
    secretName: {{ include "studiodrive.sinkSecretsKey.secretName" . }}
    items:
      - key: {{ .Values.events.sinkSecretsKey.key }}
        path: key
    defaultMode: 0440
{{- end }}

{{/* The API's TLS: the Secret holding tls.crt and tls.key (api.tls.secretName with
     mode existingSecret; otherwise the one api-tls.yaml generates or cert-manager fills). */}}
{{- define "studiodrive.api.tlsSecretName" -}}
{{- if eq .Values.api.tls.mode "existingSecret" -}}
{{ .Values.api.tls.secretName }}
{{- else -}}
{{ include "studiodrive.api.name" . }}-tls
{{- end -}}
{{- end }}

{{/* Whether the API serves TLS (every mode but plain). */}}
{{- define "studiodrive.api.tls" -}}
{{- if ne .Values.api.tls.mode "plain" }}true{{ end }}
{{- end }}

{{/* The names the API's certificate is for: its Service's in-cluster names, then
     api.tls.extraDnsNames. A YAML list (fromYamlArray). */}}
{{- define "studiodrive.api.dnsNames" -}}
{{- $svc := include "studiodrive.api.name" . }}
{{- $ns := .Release.Namespace }}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.{{ .Values.api.tls.clusterDomain }}
{{- range .Values.api.tls.extraDnsNames }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Where the API reads its certificate and key (--tls-cert-file, --tls-key-file). */}}
{{- define "studiodrive.api.tlsDir" -}}/etc/studiodrive/api-tls{{- end }}
