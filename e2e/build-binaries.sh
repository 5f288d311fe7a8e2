#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy and caches them under
# $YIYUN_CACHE/bin/<component>-<version>. Already-cached binaries are skipped, so a warm run
# returns at once. A cold run takes roughly 25-40 minutes on 2 cores (Kubernetes dominates).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${YIYUN_CACHE:-$HOME/.cache/yiyun}
bin=$cache/bin
mkdir -p "$bin" "$cache/src"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Prints a progress line every 100 packages compiled, from `go build -v` output on stdin.
progress() {
  awk -v what="$1" '{ n++; if (n % 100 == 0) { printf "[build] %s: %d packages compiled\n", what, n; fflush() } }
    END { printf "[build] %s: %d packages compiled in total\n", what, n }' >&2
}

have() { for c in "$@"; do [ -x "$bin/$c" ] || return 1; done; }

# Builds commands of one module version into $cache/src/NAME-VERSION/out, in a wrapper module of
# their own so that their dependency versions mix with no other build's:
#   build_in_wrapper NAME VERSION PACKAGE...
build_in_wrapper() {
  local name=$1 v=$2; shift 2
  local dir=$cache/src/$name-$v
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init "yiyun.local/$name-build" >/dev/null 2>&1
  go get -tool "${@/%/@$v}" 2>&1 | tail -n 3 >&2
  mkdir -p out
  go build -v -ldflags "-s -w" -o out/ "$@" 2>&1 | progress "$name $v"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  local staging_version=v0.${v#v1.}
  local minor=${v#v1.}; minor=${minor%%.*}
  if have "kube-apiserver-$v" "kube-controller-manager-$v" "kube-scheduler-$v" "kubectl-$v"; then
    return
  fi
  log "Kubernetes $v: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
  log "  cold: about 20-30 min and ~2 GB of module and build cache on 2 cores; cached afterwards"
  local dir=$cache/src/kubernetes-$v
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init yiyun.local/kubernetes-build >/dev/null 2>&1
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging;
  # a consumer must replace each with its published tag (v1.X.Y -> v0.X.Y). Read the list from
  # the release's own go.mod instead of hard-coding it.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  local staging
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  [ -n "$staging" ] || { log "no staging modules found in $gomod"; exit 1; }
  local args=()
  for m in $staging; do args+=("-replace=$m=$m@$staging_version"); done
  go mod edit "${args[@]}" "-require=k8s.io/kubernetes@$v"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  for c in "${cmds[@]}"; do go get -tool "k8s.io/kubernetes/cmd/$c@$v" 2>&1 | tail -n 3 >&2; done
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p out
  go build -v -ldflags "$ld" -o out/ "${cmds[@]/#/k8s.io/kubernetes/cmd/}" 2>&1 | progress "kubernetes $v"
  for c in "${cmds[@]}"; do
    [ -x "out/$c" ] || { log "build of $c failed"; exit 1; }
    mv "out/$c" "$bin/$c-$v"
  done
  log "Kubernetes $v ready"
}

build_etcd() {
  local v=$ETCD_VERSION
  if have "etcd-$v" "etcdctl-$v"; then return; fi
  log "etcd $v (about 3-5 min cold)"
  build_in_wrapper etcd "$v" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3
  mv out/v3 "$bin/etcd-$v" 2>/dev/null || mv out/server "$bin/etcd-$v"
  mv out/etcdctl "$bin/etcdctl-$v" 2>/dev/null || true
  [ -x "$bin/etcdctl-$v" ] || { ls out >&2; log "etcdctl build failed"; exit 1; }
  log "etcd $v ready"
}

# etcdutl restores etcd snapshots offline (`yiyun dr restore-snapshot` runs it).
build_etcdutl() {
  local v=$ETCD_VERSION
  if have "etcdutl-$v"; then return; fi
  log "etcdutl $v (about 1-2 min cold)"
  build_in_wrapper etcdutl "$v" go.etcd.io/etcd/etcdutl/v3
  [ -x out/etcdutl ] || { ls out >&2; log "etcdutl build failed"; exit 1; }
  mv out/etcdutl "$bin/etcdutl-$v"
  log "etcdutl $v ready"
}

build_kwok() {
  local v=$KWOK_VERSION
  if have "kwok-$v" && [ -f "$cache/kwok-config-$v.yaml" ]; then return; fi
  log "kwok $v (about 2-4 min cold)"
  local dir=$cache/src/kwok-$v
  rm -rf "$dir" && mkdir -p "$dir"
  if ! have "kwok-$v"; then
    GOBIN=$dir go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$v"
    mv "$dir/kwok" "$bin/kwok-$v"
  fi
  # The default stages (node initialise and lease heartbeat, pod ready/complete/delete) and the
  # emulated kubelet resource metrics (each pod's usage from its kwok.x-k8s.io/usage-cpu and
  # usage-memory annotations, served at /metrics/nodes/NODE/metrics/resource for metrics-server)
  # ship inside the module; kwok reads them as one multi-document config file.
  local moddir
  moddir=$(go mod download -json "sigs.k8s.io/kwok@$v" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  local stage=$moddir/kustomize/stage metrics=$moddir/kustomize/metrics
  for f in "$stage"/node/fast/node-initialize.yaml "$stage"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$stage"/pod/fast/pod-*.yaml "$metrics"/resource/metrics-resource.yaml "$metrics"/usage/usage-from-annotation.yaml; do
    echo "---"; cat "$f"
  done >"$cache/kwok-config-$v.yaml"
  log "kwok $v ready"
}

# metrics-server serves metrics.k8s.io (what `kubectl top` and billing's usage basis read) from
# the kubelets' resource metrics, which kwok emulates.
build_metrics_server() {
  local v=$METRICS_SERVER_VERSION
  if have "metrics-server-$v"; then return; fi
  log "metrics-server $v (about 2-3 min cold)"
  local dir=$cache/src/metrics-server-$v
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init yiyun.local/metrics-server-build >/dev/null 2>&1
  go get -tool "sigs.k8s.io/metrics-server/cmd/metrics-server@$v" 2>&1 | tail -n 3 >&2
  mkdir -p out
  go build -v -ldflags "-s -w" -o out/ sigs.k8s.io/metrics-server/cmd/metrics-server 2>&1 | progress "metrics-server $v"
  mv out/metrics-server "$bin/metrics-server-$v"
  log "metrics-server $v ready"
}

# grpcurl: the gRPC client the self-service API's tests call it with.
build_grpcurl() {
  local v=$GRPCURL_VERSION
  if have "grpcurl-$v"; then return; fi
  log "grpcurl $v (about 1-2 min cold)"
  local dir=$cache/src/grpcurl-$v
  rm -rf "$dir" && mkdir -p "$dir"
  GOBIN=$dir go install -ldflags "-s -w" "github.com/fullstorydev/grpcurl/cmd/grpcurl@$v"
  mv "$dir/grpcurl" "$bin/grpcurl-$v"
  log "grpcurl $v ready"
}

# MinIO: the S3-compatible object store the snapshot tests keep etcd snapshots in.
build_minio() {
  local v=$MINIO_VERSION
  if have "minio-$v"; then return; fi
  log "MinIO $v (about 5-8 min cold)"
  local dir=$cache/src/minio-$v
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init yiyun.local/minio-build >/dev/null 2>&1
  go get -tool "github.com/minio/minio@$v" 2>&1 | tail -n 3 >&2
  mkdir -p out
  go build -v -ldflags "-s -w" -o out/ github.com/minio/minio 2>&1 | progress "minio $v"
  [ -x out/minio ] || { ls out >&2; log "MinIO build failed"; exit 1; }
  mv out/minio "$bin/minio-$v"
  log "MinIO $v ready"
}

# helm: the chart is linted, rendered, installed, upgraded and uninstalled with it.
build_helm() {
  local v=$HELM_VERSION
  if have "helm-$v"; then return; fi
  log "helm $v (about 3-4 min cold)"
  local dir=$cache/src/helm-$v
  rm -rf "$dir" && mkdir -p "$dir"
  GOBIN=$dir go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" "helm.sh/helm/v3/cmd/helm@$v"
  mv "$dir/helm" "$bin/helm-$v"
  log "helm $v ready"
}

# Prometheus and promtool: a real Prometheus scrapes the components in the tests; promtool checks
# their /metrics, the alerting rules and the rules' unit tests.
build_prometheus() {
  local v=$PROMETHEUS_VERSION
  if have "prometheus-$v" "promtool-$v"; then return; fi
  log "Prometheus $v and promtool (about 7-10 min cold)"
  build_in_wrapper prometheus "$v" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
  [ -x out/prometheus ] && [ -x out/promtool ] || { ls out >&2; log "Prometheus build failed"; exit 1; }
  mv out/prometheus "$bin/prometheus-$v"
  mv out/promtool "$bin/promtool-$v"
  log "Prometheus $v ready"
}

# Jaeger all-in-one: the components' traces go to it over OTLP in the tests, which find their
# spans through its query API.
build_jaeger() {
  local v=$JAEGER_VERSION
  if have "jaeger-$v"; then return; fi
  log "Jaeger $v all-in-one (about 4-6 min cold)"
  build_in_wrapper jaeger "$v" github.com/jaegertracing/jaeger/cmd/all-in-one
  [ -x out/all-in-one ] || { ls out >&2; log "Jaeger build failed"; exit 1; }
  mv out/all-in-one "$bin/jaeger-$v"
  log "Jaeger $v ready"
}

# The Prometheus Operator's CRDs for ServiceMonitor and PrometheusRule, from its module's source:
# the chart test installs them so that the chart's monitoring objects are created for real.
fetch_prometheus_operator_crds() {
  local v=$PROMETHEUS_OPERATOR_VERSION
  local dest=$cache/prometheus-operator-crds-$v
  if [ -f "$dest/servicemonitors.yaml" ] && [ -f "$dest/prometheusrules.yaml" ]; then return; fi
  log "Prometheus Operator $v CRDs"
  local source
  source=$(cd "$cache/src" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$v" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$source/example/prometheus-operator-crd" ] || { log "no CRDs in the module at $source"; exit 1; }
  mkdir -p "$dest"
  for kind in servicemonitors prometheusrules; do
    cp "$source/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$dest/$kind.yaml"
  done
  log "Prometheus Operator $v CRDs ready"
}

if [ "${1:-}" = "--check" ]; then
  # Exit 0 when every binary is cached already, 1 when a build is needed.
  have "etcd-$ETCD_VERSION" "etcdctl-$ETCD_VERSION" "etcdutl-$ETCD_VERSION" "kwok-$KWOK_VERSION" "metrics-server-$METRICS_SERVER_VERSION" \
    "grpcurl-$GRPCURL_VERSION" "minio-$MINIO_VERSION" "helm-$HELM_VERSION" \
    "prometheus-$PROMETHEUS_VERSION" "promtool-$PROMETHEUS_VERSION" "jaeger-$JAEGER_VERSION" \
    "kube-apiserver-$KUBERNETES_VERSION" "kube-controller-manager-$KUBERNETES_VERSION" \
    "kube-scheduler-$KUBERNETES_VERSION" "kubectl-$KUBERNETES_VERSION" &&
    [ -f "$cache/kwok-config-$KWOK_VERSION.yaml" ] &&
    [ -f "$cache/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION/prometheusrules.yaml" ]
  exit
fi

start=$(date +%s)
build_etcd
build_etcdutl
build_kwok
build_metrics_server
build_grpcurl
build_minio
build_helm
build_prometheus
build_jaeger
fetch_prometheus_operator_crds
build_kubernetes
log "all binaries cached in $bin ($(( $(date +%s) - start ))s)"
