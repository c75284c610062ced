{{- define "prism.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "prism.labels" -}}
app.kubernetes.io/name: prism
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "prism.secretName" -}}
{{- default (printf "%s-credentials" (include "prism.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{/* No keys given and not insecure: the chart generates an admin key (secret.yaml) and hands it to every pod. */}}
{{- define "prism.generateAdminKey" -}}
{{- if not (or .Values.auth.existingSecret .Values.auth.keys .Values.auth.insecure) -}}true{{- end -}}
{{- end -}}

{{- define "prism.adminKeySecret" -}}
{{- printf "%s-admin-key" (include "prism.fullname" .) -}}
{{- end -}}

{{- define "prism.dataClaim" -}}
{{- default (printf "%s-data" (include "prism.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The data volume is on the head pod only (ReadWriteOnce, or no persistence): the ingress runs there too. */}}
{{- define "prism.ingressOnHead" -}}
{{- if not (and .Values.persistence.enabled (eq .Values.persistence.accessMode "ReadWriteMany")) -}}true{{- end -}}
{{- end -}}

{{- define "prism.rayTokenSecret" -}}
{{- default (printf "%s-ray-token" (include "prism.fullname" .)) .Values.rayAuth.existingSecret -}}
{{- end -}}

{{- define "prism.milvusUri" -}}
{{- if .Values.milvus.bundled -}}
{{- printf "http://%s-milvus:19530" .Release.Name -}}
{{- else -}}
{{- .Values.milvus.uri -}}
{{- end -}}
{{- end -}}

{{- define "prism.esUrl" -}}
{{- if .Values.elasticsearch.bundled -}}
{{- printf "https://%s-eck-elasticsearch-es-http:9200" .Release.Name -}}
{{- else -}}
{{- .Values.elasticsearch.url -}}
{{- end -}}
{{- end -}}

{{/* The Serve config: the same shape as deploy/serve-config.yaml. */}}
{{- define "prism.serveConfig" -}}
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: 8000
{{- if .Values.grpc.enabled }}
grpc_options:
  port: 9000
  grpc_servicer_functions:
    - cluster.proto.prism.v1.prism_pb2_grpc.add_SearchServicer_to_server
    - cluster.proto.prism.v1.prism_pb2_grpc.add_CollectionsServicer_to_server
    - grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server
{{- end }}
applications:
  - name: prism
    route_prefix: /
    import_path: router.serving.app:build_app
    args:
      config:
        data_dir: /var/lib/prism
        host: 0.0.0.0
        port: 8000
        grpc_port: {{ if .Values.grpc.enabled }}9000{{ else }}0{{ end }}
        grpc_max_message_bytes: {{ .Values.grpc.maxMessageBytes | int }}
        milvus:
          mode: server
          uri: {{ include "prism.milvusUri" . }}
          gpu: {{ .Values.gpu.enabled }}
        elasticsearch:
          mode: external
          url: {{ include "prism.esUrl" . }}
        shard_timeout_s: {{ .Values.prism.shardTimeoutS }}
        encoder_replicas: {{ .Values.prism.encoderReplicas }}
        ingress_replicas: {{ .Values.prism.ingressReplicas }}
        {{- with .Values.prism.ingressMaxReplicas }}
        ingress_max_replicas: {{ . }}
        {{- end }}
        max_upload_bytes: {{ .Values.prism.maxUploadBytes | int }}
        insecure: {{ .Values.auth.insecure }}
        auth:
          metrics: {{ .Values.auth.metrics }}
          rate_limits:
            read_per_s: {{ .Values.auth.rateLimits.readPerS | toJson }}
            write_per_s: {{ .Values.auth.rateLimits.writePerS | toJson }}
            burst_s: {{ .Values.auth.rateLimits.burstS }}
        limits: {{ toJson .Values.auth.limits }}
        {{- if .Values.snapshots.url }}
        snapshots:
          url: {{ .Values.snapshots.url | quote }}
          {{- with .Values.snapshots.endpointUrl }}
          options: {endpoint_url: {{ . | quote }}}
          {{- end }}
        {{- end }}
        filters:
          mode: {{ .Values.prism.filters.mode }}
          prefilter_max_ids: {{ .Values.prism.filters.prefilterMaxIds | int }}
        placement:
          encoder_num_gpus: {{ if .Values.gpu.enabled }}{{ .Values.gpu.encoderNumGpus }}{{ else }}0{{ end }}
          ingress_on_head: {{ if include "prism.ingressOnHead" . }}true{{ else }}false{{ end }}
        collections:
        {{- range .Values.prism.collections }}
          - name: {{ .name }}
            shards: {{ .shards }}
            replicas: {{ .replicas }}
            write_quorum: {{ .writeQuorum | default "majority" }}
            spaces:
            {{- range $space, $s := .spaces }}
              {{ $space }}:
                dim: {{ $s.dim }}
                metric: {{ $s.metric | default "cosine" }}
                {{- if $s.encoder }}
                encoder: {{ $s.encoder }}
                source: {{ $s.source }}
                {{- end }}
                index:
                {{- if $.Values.gpu.enabled }}
                  type: {{ $.Values.gpu.indexType }}
                  params: {{ toJson $.Values.gpu.indexParams }}
                {{- else }}
                  type: {{ $s.indexType | default "HNSW" }}
                {{- end }}
            {{- end }}
            metadata: {{ toJson (.metadata | default dict) }}
        {{- end }}
{{- end -}}
