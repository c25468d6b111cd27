{{- define "kubetrain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetrain.labels" -}}
app.kubernetes.io/name: kubetrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetrain.selector" -}}
app.kubernetes.io/name: kubetrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetrain.serviceAccountName" -}}
{{- default (include "kubetrain.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /*
Images pinned by digest render as name@digest, with the tag left out: the runtime pulls by
the digest and never checks a tag beside it, so that tag could only name the wrong version.
*/ -}}
{{- define "kubetrain.operatorImage" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository ($image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- /*
A trainer image: the value (name:tag, or name@digest) as it is, or with its tag replaced by
the digest given beside it. Call with (list <image value> <digest value> <value name>).
*/ -}}
{{- define "kubetrain.trainerImage" -}}
{{- $image := index . 0 -}}
{{- $digest := index . 1 -}}
{{- $name := index . 2 -}}
{{- if not $digest -}}
{{- $image -}}
{{- else if contains "@" $image -}}
{{- fail (printf "trainer.%s %q already carries a digest; set trainer.%sDigest or a digest in trainer.%s, not both" $name $image $name $name) -}}
{{- else -}}
{{- printf "%s@%s" (regexReplaceAll `:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$` $image "") $digest -}}
{{- end -}}
{{- end -}}

{{- /* The Secret where the operator keeps the report channel's CA and certificate. */ -}}
{{- define "kubetrain.reportSecret" -}}
{{ include "kubetrain.fullname" . }}-report-channel-tls
{{- end -}}

{{- /* The operator Pods' selector as a label query (a=b,c=d), sorted by key. */ -}}
{{- define "kubetrain.selectorString" -}}
{{- $pairs := list -}}
{{- range $key, $value := include "kubetrain.selector" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
