{{/* Name of the chart, truncated to 63 characters. */}}
{{- define "kmo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release name, plus chart name unless the release already contains it. */}}
{{- define "kmo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kmo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kmo.labels" -}}
{{ include "kmo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kinde-m2m-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kmo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kmo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules for the operator's own resources: cluster-wide, or in each watched namespace. */}}
{{- define "kmo.namespacedRules" -}}
# Watched (list + watch: the controllers' caches; no get by name), finalizers patched.
- apiGroups: ["m2m.kinde-operator.io"]
  resources: ["apiregistrations", "m2mapplications", "apigrants", "kindeconnections"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["m2m.kinde-operator.io"]
  resources: ["apiregistrations/status", "m2mapplications/status", "apigrants/status", "kindeconnections/status"]
  verbs: ["patch"]
# No m2mapplications/finalizers: the Secret's ownerReference does not set blockOwnerDeletion
# (with OwnerReferencesPermissionEnforcement that would need it; tests/e2e/rbac.rs runs with
# that admission plugin on).
# Credentials Secrets: read by name (also a connection's management Secret, the only other
# Secrets the operator reads), watched (metadata only, by label), written with
# server-side apply only (`patch`, plus `create`: the API server authorizes an apply that
# creates a missing Secret as a create). Never `update` or `delete` (garbage collection
# removes them through the ownerReference).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
