#!/usr/bin/env bash
# Builds the local cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, kube-proxy, helm, kueue, containerd, coredns) into bin/
# from the locked module graphs in hack/tools/<tool>/ (go.mod + go.sum, written by `make lock`). The build runs with -mod=readonly and
# GOTOOLCHAIN=local: nothing is resolved at build time, and a lock that does not cover the
# build fails it instead of being quietly completed.
#
# Builds are cached under $KUBETRAIN_CACHE (default ~/.cache/kubetrain), keyed by a digest of
# the tool's go.mod, go.sum, the Go release, the link flags and its extra step below (if any):
# a change to any of them is a new cache entry, so a cache can never stand in for a build the
# lock no longer describes.
#
#   hack/build-binaries.sh [TOOL...]          build these tools (default: all) into bin/
#   hack/build-binaries.sh --keys [TOOL...]   print their cache entries' names, <tool>-<key>, one
#                                             a line, and build nothing (hack/setup-ci.sh proves
#                                             each entry's inputs cold once per machine)
#
# TOOL: etcd, kubernetes, helm, kueue, containerd, coredns.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
bin="$root/bin"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

tools=(etcd kubernetes helm kueue containerd coredns)
mode=build
[ "${1:-}" = "--keys" ] && mode=keys && shift
only=("$@")
for t in "${only[@]}"; do
  [[ " ${tools[*]} " == *" $t "* ]] || { echo "unknown tool $t (one of: ${tools[*]})" >&2; exit 2; }
done
# wanted TOOL: TOOL was asked for (every tool when none was named).
wanted() {
  [ ${#only[@]} -eq 0 ] && return 0
  [[ " ${only[*]} " == *" $1 "* ]]
}

# key TOOL LDFLAGS: the cache key of a tool's build.
key() {
  local dir="$root/hack/tools/$1"
  {
    cat "$dir/go.mod" "$dir/go.sum"
    go env GOVERSION
    echo "$2"
    if declare -F "extra_$1" >/dev/null; then declare -f "extra_$1"; fi
  } | sha256sum | cut -c1-16
}

# build TOOL LDFLAGS NAME=PACKAGE...: build the packages from hack/tools/TOOL into the cache
# entry for their key (unless it is there) and install them into bin/ under their names.
build() {
  local tool="$1" ldflags="$2"
  shift 2
  wanted "$tool" || return 0
  local k entry names=() pkgs=() gonames=() a p
  k="$(key "$tool" "$ldflags")"
  if [ "$mode" = keys ]; then
    echo "$tool-$k"
    return
  fi
  entry="$cache/$tool-$k"
  for a in "$@"; do
    names+=("${a%%=*}") && p="${a#*=}" && pkgs+=("$p")
    [[ "$p" =~ /v[0-9]+$ ]] && p="${p%/*}"
    gonames+=("${p##*/}")  # go build names a binary without its trailing /vN
  done
  local n installed=1
  for n in "${names[@]}"; do
    [ -x "$bin/$n" ] && [ "$(cat "$bin/.$n.key" 2>/dev/null)" = "$tool-$k" ] || installed=0
  done
  if [ "$installed" = 1 ]; then
    log "$tool: bin/ is current (lock $k)"
    return
  fi
  if [ ! -f "$entry/.complete" ]; then
    local started=$SECONDS out="$cache/.build-$tool-$k.$$"
    log "$tool: building ${names[*]} from hack/tools/$tool (lock $k; minutes on a cold cache)"
    rm -rf "$out" && mkdir -p "$out"
    (cd "$root/hack/tools/$tool" && go build -v -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}") 2>&1 |
      awk '/^go: downloading/ {d++; next} /^(go: |#|.*\.go:[0-9])/ {print; fflush(); next}
        {n++} n%200==0 {printf "[build-binaries] ... %d packages compiled\n", n; fflush()}
        END {if (d) printf "[build-binaries] ... %d modules downloaded\n", d}'
    local i
    for i in "${!names[@]}"; do
      [ -x "$out/${gonames[$i]}" ] || { log "ERROR: $tool: ${pkgs[$i]} was not built"; rm -rf "$out"; exit 1; }
      [ "${gonames[$i]}" = "${names[$i]}" ] || mv "$out/${gonames[$i]}" "$out/${names[$i]}"
    done
    if declare -F "extra_$tool" >/dev/null; then "extra_$tool" "$out"; fi
    touch "$out/.complete"
    rm -rf "$entry" && mv "$out" "$entry"
    log "$tool: built in $((SECONDS - started))s"
  fi
  if [ -d "$entry/$tool-manifests" ]; then
    rm -rf "$bin/$tool-manifests" && cp -r "$entry/$tool-manifests" "$bin/$tool-manifests"
  fi
  for n in "${names[@]}"; do
    cp -f "$entry/$n" "$bin/$n.tmp" && mv -f "$bin/$n.tmp" "$bin/$n"
    echo "$tool-$k" >"$bin/.$n.key"
  done
  log "$tool: installed ${names[*]} into bin/ (lock $k)"
}

command -v go >/dev/null || { echo "go is required to build the local cluster's binaries" >&2; exit 1; }
[ "$mode" = keys ] || mkdir -p "$bin" "$cache"
started=$SECONDS

build etcd "-s -w" etcd=go.etcd.io/etcd/server/v3

k8s_x=""
k8s_minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  k8s_x+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build kubernetes "-s -w$k8s_x" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler kubectl=k8s.io/kubernetes/cmd/kubectl \
  kubelet=k8s.io/kubernetes/cmd/kubelet kube-proxy=k8s.io/kubernetes/cmd/kube-proxy

helm_major="${HELM_VERSION%%.*}"
build helm "-s -w -X helm.sh/helm/$helm_major/internal/version.version=$HELM_VERSION" \
  "helm=helm.sh/helm/$helm_major/cmd/helm"

# extra_kueue DIR: Kueue's CRDs and webhook manifests from the module version the binary was
# built from (the local cluster installs them; kubetrain.localcluster.kueue).
extra_kueue() {
  local src
  src="$(cd "$root/hack/tools/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  mkdir -p "$1/kueue-manifests/crd"
  cp "$src"/config/components/crd/bases/*.yaml "$1/kueue-manifests/crd/"
  cp "$src/config/components/webhook/manifests.yaml" "$1/kueue-manifests/webhooks.yaml"
  chmod -R u+w "$1/kueue-manifests"
}
build kueue "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" kueue=sigs.k8s.io/kueue/cmd/kueue

# The real node's runtime (make cluster-up NODE=real): containerd, its runc shim and ctr, and
# CoreDNS for the Pods' cluster DNS.
ctrd=github.com/containerd/containerd/v2
build containerd "-s -w -X $ctrd/version.Version=$CONTAINERD_VERSION" \
  containerd=$ctrd/cmd/containerd containerd-shim-runc-v2=$ctrd/cmd/containerd-shim-runc-v2 \
  ctr=$ctrd/cmd/ctr
build coredns "-s -w" coredns=github.com/coredns/coredns

[ "$mode" = build ] || exit 0
[ ${#only[@]} -eq 0 ] || { log "built ${only[*]} ($((SECONDS - started))s)"; exit 0; }
log "bin/ holds kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, kueue $KUEUE_VERSION, containerd $CONTAINERD_VERSION, coredns $COREDNS_VERSION ($((SECONDS - started))s)"
