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
