{{/*
The chart's name, overridable with nameOverride.
*/}}
{{- define "fedcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the prefix of every object the chart creates. A release named like
the chart is not repeated ("fedcred", not "fedcred-fedcred").
*/}}
{{- define "fedcred.fullname" -}}
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

{{- define "fedcred.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "fedcred.labels" -}}
helm.sh/chart: {{ include "fedcred.chart" . }}
{{ include "fedcred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedcred
{{- end }}

{{/*
Labels that select the controller's pods; never change them in an upgrade (Deployment
selectors are immutable).
*/}}
{{- define "fedcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "fedcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedcred.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference, also injected into pods as the metadata emulator sidecar.
*/}}
{{- define "fedcred.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Names the controller is told through its flags and that RBAC pins with resourceNames.
*/}}
{{- define "fedcred.webhookServiceName" -}}
{{- printf "%s-webhook" (include "fedcred.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedcred.metricsServiceName" -}}
{{- printf "%s-metrics" (include "fedcred.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedcred.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "fedcred.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedcred.webhookConfigurationName" -}}
{{- include "fedcred.fullname" . }}
{{- end }}

{{- define "fedcred.leaseName" -}}
{{- printf "%s-controller" (include "fedcred.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The DNS name the API server uses for the webhook Service; the serving certificate is issued
for it.
*/}}
{{- define "fedcred.webhookDNSName" -}}
{{- printf "%s.%s.svc" (include "fedcred.webhookServiceName" .) .Release.Namespace }}
{{- end }}

{{/*
The rules of the controller's work in a namespace it serves: every namespace through the
ClusterRole, or each of watchNamespaces through a Role there. Each rule names the code path
that needs it.
*/}}
{{- define "fedcred.servedRules" -}}
# Watches FederatedCredentials; the webhook reads the one a pod names.
- apiGroups: ["fedcred.io"]
  resources: ["federatedcredentials"]
  verbs: ["get", "list", "watch"]
# Writes their status (server-side apply); never their spec.
- apiGroups: ["fedcred.io"]
  resources: ["federatedcredentials/status"]
  verbs: ["patch"]
# Token Secrets: watched by label, written by server-side apply (a patch, which needs create
# as well when the Secret does not exist yet). No get, update or delete: the controller reads
# them from its watch, and ownerReferences let the garbage collector remove them.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch", "create", "patch"]
# IRSA: reads the ServiceAccount a FederatedCredential names (its role ARN annotation)
# and asks for a short-lived token of it through TokenRequest. RBAC cannot narrow this to
# some ServiceAccounts or audiences (SECURITY.md, What RBAC cannot narrow).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
# Events on FederatedCredentials (kube-runtime's recorder writes events.k8s.io/v1).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if eq (include "fedcred.rollouts" .) "true" }}
# Rollouts (rollouts.enabled): lists the workloads of a FederatedCredential's namespace and
# annotates the pod template of those whose pods use it when its injected settings change.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["list", "patch"]
{{- end }}
{{- end }}

{{/*
Whether rollouts are on. `helm upgrade --reuse-values` from a chart without the value keeps
the old values, which have no `rollouts` at all: that reads as off.
*/}}
{{- define "fedcred.rollouts" -}}
{{- if and .Values.rollouts .Values.rollouts.enabled }}true{{ else }}false{{ end }}
{{- end }}
