{{- define "splitwatch.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "splitwatch.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "splitwatch.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- /* The image of one Dockerfile target: (list $ "proxy") or (list $ "full"); the tag defaults to appVersion. */ -}}
{{- define "splitwatch.image" -}}
{{- $root := index . 0 -}}
{{- $image := index $root.Values.image (index . 1) -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- /* Where the analyzer and the report find the lake: the object store's URI, or a path on its volume. */ -}}
{{- define "splitwatch.lakeDir" -}}
{{- default "/var/lib/splitwatch/lake" .Values.analyzer.lake.uri -}}
{{- end -}}

{{- /* The pod volume named "lake": the lake's claim, or (lake on an object store) scratch space. */ -}}
{{- define "splitwatch.lakeVolume" -}}
- name: lake
{{- if .Values.analyzer.lake.uri }}
  emptyDir: {}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-lake" (include "splitwatch.fullname" .)) .Values.analyzer.persistence.existingClaim }}
{{- end }}
{{- end -}}
