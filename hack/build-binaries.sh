#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm) from their Go modules into bin/.
#
# Built binaries are cached per version under $KUBETRAIN_CACHE (default
# ~/.cache/kubetrain), so a fresh clone on a machine that built them once only copies.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
bin="$root/bin"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
mkdir -p "$bin" "$cache"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# install NAME VERSION: copy a cached build into bin/ and record its version.
install_cached() {
  local name="$1" version="$2" src="$cache/$1-$2"
  cp -f "$src" "$bin/$name.tmp" && mv -f "$bin/$name.tmp" "$bin/$name"
  echo "$version" >"$bin/.$name.version"
}

# have NAME VERSION: true when bin/ already holds that version.
have() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }

# replaces_for MODFILE NEWVERSION: one `-replace` flag per local-path replace in MODFILE,
# pointing that module at NEWVERSION on the module proxy instead.
replaces_for() {
  go mod edit -json "$1" | python3 -c '
import json, sys
version = sys.argv[1]
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("."):
        if "FORBIDDEN" in r["New"]["Path"]:
            continue
        print("-replace=%s=%s@%s" % (r["Old"]["Path"], r["Old"]["Path"], version))
' "$2"
}

modfile_of() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'; }

build_kubernetes() {
  local comps=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=()
  for c in "${comps[@]}"; do [ -x "$cache/$c-$K8S_VERSION" ] || missing+=("$c"); done
  if [ ${#missing[@]} -gt 0 ]; then
    local work="$cache/src/kubernetes-$K8S_VERSION" staging minor major
    rm -rf "$work" && mkdir -p "$work"
    staging="v0.${K8S_VERSION#v1.}"
    major=1; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    log "kubernetes $K8S_VERSION: resolving modules (staging modules at $staging)"
    (
      cd "$work"
      go mod init kubetrain.local/build/kubernetes >/dev/null 2>&1
      go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$K8S_VERSION"
      # shellcheck disable=SC2046
      go mod edit $(replaces_for "$(modfile_of "k8s.io/kubernetes@$K8S_VERSION")" "$staging")
      local pkgs=()
      for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
      go get "${pkgs[@]}" >/dev/null
      local x=""
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        x+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
      done
      mkdir -p out
      log "kubernetes $K8S_VERSION: compiling ${missing[*]} (several minutes on a cold cache)"
      CGO_ENABLED=0 go build -v -trimpath -ldflags "-s -w$x" -o out/ "${pkgs[@]}" 2>&1 |
        awk '{n++} n%200==0 {printf "[build-binaries] ... %d packages compiled\n", n; fflush()}'
      for c in "${missing[@]}"; do
        [ -x "out/$c" ] || { log "ERROR: $c was not built"; exit 1; }
        mv -f "out/$c" "$cache/$c-$K8S_VERSION"
      done
    )
  fi
  for c in "${comps[@]}"; do install_cached "$c" "$K8S_VERSION"; done
}

build_etcd() {
  if [ ! -x "$cache/etcd-$ETCD_VERSION" ]; then
    local work="$cache/src/etcd-$ETCD_VERSION"
    rm -rf "$work" && mkdir -p "$work"
    log "etcd $ETCD_VERSION: resolving modules"
    (
      cd "$work"
      go mod init kubetrain.local/build/etcd >/dev/null 2>&1
      go mod edit -go=1.26.0 -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
      # shellcheck disable=SC2046
      go mod edit $(replaces_for "$(modfile_of "go.etcd.io/etcd/server/v3@$ETCD_VERSION")" "$ETCD_VERSION")
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
      log "etcd $ETCD_VERSION: compiling"
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$cache/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3
    )
  fi
  install_cached etcd "$ETCD_VERSION"
}

build_helm() {
  if [ ! -x "$cache/helm-$HELM_VERSION" ]; then
    local work="$cache/src/helm-$HELM_VERSION" major="${HELM_VERSION%%.*}"
    rm -rf "$work" && mkdir -p "$work"
    log "helm $HELM_VERSION: compiling"
    GOBIN="$work" CGO_ENABLED=0 go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
    mv -f "$work/helm" "$cache/helm-$HELM_VERSION"
  fi
  install_cached helm "$HELM_VERSION"
}

command -v go >/dev/null || { echo "go is required to build the Kubernetes binaries" >&2; exit 1; }
start=$(date +%s)
have etcd "$ETCD_VERSION" || build_etcd
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  have "$c" "$K8S_VERSION" || { build_kubernetes; break; }
done
have helm "$HELM_VERSION" || build_helm
log "bin/ holds kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION ($(( $(date +%s) - start ))s)"
