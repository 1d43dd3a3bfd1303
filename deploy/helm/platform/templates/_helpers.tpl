{{/*
The name prefix of every resource: the release name (or fullnameOverride), so that
`helm install platform` gives the Services platform-gateway and platform-downstream-mock
that DESIGN.md promises. At most 47 characters: the longest name made from it,
"<prefix>-downstream-mock", must stay a 63-character DNS label.
*/}}
{{- define "platform.fullname" -}}
{{- $name := .Values.fullnameOverride | default .Release.Name -}}
{{- if gt (len $name) 47 -}}
{{- fail (printf "the name prefix %q is longer than 47 characters; set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "platform.labels" -}}
helm.sh/chart: {{ include "platform.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "platform.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's resources. */}}
{{- define "platform.componentLabels" -}}
{{ include "platform.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "platform.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
The image of one component: (dict "root" $ "image" .Values.gateway.image "key" "gateway").
The tag defaults to the chart's appVersion, the version the images are published under;
`latest` is refused, because a pod restarted next week would run different code. A
digest, when given, pins the exact image and replaces the tag.
*/}}
{{- define "platform.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s.image.tag: \"latest\" is not allowed; use a version (default: the chart's appVersion) or a digest" .key) -}}
{{- end -}}
{{- if .image.digest -}}
{{- if not (hasPrefix "sha256:" .image.digest) -}}
{{- fail (printf "%s.image.digest must look like sha256:<64 hex digits>, got %q" .key .image.digest) -}}
{{- end -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of one component, lined up with its drain. The kubelet
counts it from the moment the pod is deleted, preStop included:

  preStopSleepSeconds       endpoints and load balancers forget the pod; it still serves
  + gracefulTimeoutSeconds  SIGTERM: gunicorn stops accepting, finishes in-flight requests
  + 5                       the master reaps its workers, flushes traces and exits

Anything shorter SIGKILLs requests that were promised a graceful end, so it is refused.
*/}}
{{- define "platform.terminationGracePeriodSeconds" -}}
{{- $needed := add .values.preStopSleepSeconds .values.gracefulTimeoutSeconds 5 -}}
{{- $set := .values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $set -}}
{{- $needed -}}
{{- else if lt (int $set) (int $needed) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds=%v is shorter than preStopSleepSeconds + gracefulTimeoutSeconds + 5 = %d: requests still draining would be killed" .key $set (int $needed)) -}}
{{- else -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/*
The preStop hook: wait, still serving, while the endpoint removal reaches kube-proxy,
ingress controllers and load balancers; only then does the kubelet send SIGTERM. An exec
of the image's own python rather than `lifecycle.preStop.sleep`, which needs Kubernetes
1.30 (beta) and this chart supports 1.27; python3 is the one program the image must have
(the service runs on it), where a shell or `sleep` need not be there on a slimmer base.
*/}}
{{- define "platform.preStop" -}}
preStop:
  exec:
    command: ["python3", "-c", "import time; time.sleep({{ int . }})"]
{{- end -}}

{{/*
Environment every component gets: the metrics directory, and OpenTelemetry.
(dict "root" $ "service" "gateway" "component" "gateway" "image" .Values.gateway.image)
*/}}
{{- define "platform.commonEnv" -}}
{{- $otel := .root.Values.otel -}}
- name: PROMETHEUS_MULTIPROC_DIR
  value: /tmp/metrics
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- if $otel.enabled }}
{{- if not $otel.endpoint }}
{{- fail "otel.endpoint is required when otel.enabled is true (e.g. http://otel-collector.observability:4318)" }}
{{- end }}
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
{{- with $otel.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- $attrs := list "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" "k8s.pod.name=$(K8S_POD_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" (printf "k8s.deployment.name=%s-%s" (include "platform.fullname" .root) .component) (printf "service.version=%s" (.image.tag | default .root.Chart.AppVersion)) }}
{{- range $key := keys $otel.resourceAttributes | sortAlpha }}
{{- $attrs = append $attrs (printf "%s=%v" $key (get $otel.resourceAttributes $key)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- end -}}

{{/*
Volumes every component gets. The root filesystem is read-only: /tmp (gunicorn's
worker heartbeat files, the mock's shared state), /tmp/metrics (PROMETHEUS_MULTIPROC_DIR,
emptied by the gunicorn master at start) and /app/logs (the optional log file) are the
only writable places.
*/}}
{{- define "platform.scratchVolumes" -}}
{{- $v := .Values.volumes -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmp.sizeLimit }}
- name: metrics
  emptyDir:
    {{- with $v.metrics.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ $v.metrics.sizeLimit }}
- name: logs
  emptyDir:
    sizeLimit: {{ $v.logs.sizeLimit }}
{{- end -}}

{{- define "platform.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: metrics
  mountPath: /tmp/metrics
- name: logs
  mountPath: /app/logs
{{- end -}}

{{/*
Topology spread constraints of one component; a constraint without a labelSelector gets
the component's own selector labels, so users need not repeat them.
(dict "root" $ "component" "gateway" "constraints" .Values.gateway.topologySpreadConstraints)
*/}}
{{- define "platform.topologySpread" -}}
{{- $selector := include "platform.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* The gateway's route file, rendered from gateway.routes + gateway.extraRoutes. */}}
{{- define "platform.gateway.routesFile" -}}
{{- $routes := concat .Values.gateway.routes .Values.gateway.extraRoutes -}}
{{- if not $routes -}}
{{- fail "gateway.routes and gateway.extraRoutes are both empty: the gateway refuses to start without a route" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $i, $route := $routes -}}
{{- if not (and $route.name $route.prefix $route.upstream) -}}
{{- fail (printf "gateway route #%d needs a name, a prefix and an upstream" $i) -}}
{{- end -}}
{{- if hasKey $names $route.name -}}
{{- fail (printf "gateway route name %q is used twice" $route.name) -}}
{{- end -}}
{{- $_ := set $names $route.name true -}}
{{- end -}}
{{- $rendered := tpl (toYaml (dict "routes" $routes)) . -}}
{{- if and (not .Values.downstreamMock.enabled) (contains (printf "//%s-downstream-mock" (include "platform.fullname" .)) $rendered) -}}
{{- fail "a gateway route points at the downstream-mock, but downstreamMock.enabled is false: set gateway.routes to your own upstreams" -}}
{{- end -}}
{{- $rendered -}}
{{- end -}}
