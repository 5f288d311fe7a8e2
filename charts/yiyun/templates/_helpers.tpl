{{/*
One component of yiyun: a Deployment running `yiyun <args>` as the component's own
ServiceAccount, its admin port (`/metrics`, `/healthz`, `/readyz`) behind a Service, a
PodDisruptionBudget, a NetworkPolicy and, when asked for, a ServiceMonitor. A new component is one
call of this template and a role of its own.

Called with a dict:
  root       the chart's root context
  name       the component (`controller`, `scheduler`, ...); objects are `yiyun-<name>`
  values     the component's values (replicas, resources, extraArgs)
  args       the `yiyun` arguments that run it
  adminPort  the admin port
  ports      more container ports: a list of dicts {name, port}, served by the Service too
  env        more container env entries (a list)
  volumes    a list of {name, secret, mountPath}: Secrets mounted read-only
  serves     true for a component that serves requests: its readiness probe is `/readyz`. The
             others elect a leader, and `/readyz` answers 200 only on the one doing the work; a
             standby must still count as available, or a rolling update (the new pod never
             ready while the old one leads) and every node drain (the PodDisruptionBudget with
             one of two ready) would wait forever. Their readiness probe is `/healthz`.
*/}}
{{- define "yiyun.component" -}}
{{- $root := .root -}}
{{- $name := printf "yiyun-%s" .name -}}
{{- $values := .values -}}
{{- $labels := dict "app.kubernetes.io/name" "yiyun" "app.kubernetes.io/component" .name "app.kubernetes.io/instance" $root.Release.Name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "yiyun.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  replicas: {{ $values.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  template:
    metadata:
      labels:
        {{- include "yiyun.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: true
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # Replicas on different nodes: a node lost takes at most one of them.
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- toYaml $labels | nindent 14 }}
      containers:
        - name: {{ .name }}
          image: {{ include "yiyun.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            {{- range $values.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - {name: YIYUN_LOG_FORMAT, value: {{ $root.Values.logFormat | quote }}}
            - {name: RUST_LOG, value: {{ $root.Values.logLevel | quote }}}
            {{- with $root.Values.otlpEndpoint }}
            - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ . | quote }}}
            {{- end }}
            # Leader election: the Lease in the release's namespace, held by the pod's name.
            - {name: YIYUN_LEASE_NAMESPACE, value: {{ $root.Release.Namespace | quote }}}
            - name: YIYUN_LEASE_IDENTITY
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - {name: admin, containerPort: {{ .adminPort }}, protocol: TCP}
            {{- range .ports }}
            - {name: {{ .name }}, containerPort: {{ .port }}, protocol: TCP}
            {{- end }}
          livenessProbe:
            httpGet: {path: /healthz, port: admin}
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: {{ if .serves }}/readyz{{ else }}/healthz{{ end }}, port: admin}
            periodSeconds: 5
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            # The root filesystem is read-only; a little scratch space for what needs it.
            - {name: tmp, mountPath: /tmp}
            {{- range .volumes }}
            - {name: {{ .name }}, mountPath: {{ .mountPath }}, readOnly: true}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 64Mi}
        {{- range .volumes }}
        - name: {{ .name }}
          secret: {secretName: {{ .secret }}}
        {{- end }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "yiyun.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  selector:
    {{- toYaml $labels | nindent 4 }}
  ports:
    - {name: admin, port: {{ .adminPort }}, targetPort: admin}
    {{- range .ports }}
    - {name: {{ .name }}, port: {{ .servicePort | default .port }}, targetPort: {{ .name }}}
    {{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "yiyun.labels" $root | nindent 4 }}
spec:
  # One replica may go at a time; with one replica, a drain waits for nothing.
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "yiyun.labels" $root | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports: [{port: {{ .adminPort }}, protocol: TCP}]
      {{- with $root.Values.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- range .ports }}
    - ports: [{port: {{ .port }}, protocol: TCP}]
      {{- with .from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
{{- end }}
{{- if $root.Values.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "yiyun.labels" $root | nindent 4 }}
    {{- with $root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "yiyun.labels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .name }}
  endpoints:
    - {port: admin, path: /metrics, interval: {{ $root.Values.serviceMonitor.interval }}}
{{- end }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "yiyun.labels" -}}
app.kubernetes.io/name: yiyun
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The image, its tag defaulting to the chart's appVersion. */}}
{{- define "yiyun.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
