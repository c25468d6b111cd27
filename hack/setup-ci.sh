#!/usr/bin/env bash
# CI's setup (.ci/run): what `make setup` does, with each expensive component proven cold once
# per inputs on this machine. The components are the venv (hack/requirements.lock) and each
# tool of hack/build-binaries.sh (etcd, kubernetes, helm, kueue, containerd, coredns).
#
# A component whose inputs this machine has not yet built from nothing is built alone, from
# empty caches of its own (binary cache, Go module and build caches, pip and uv caches) with
# GOFLAGS=-mod=readonly, then recorded in $KUBETRAIN_CACHE/cold-proven/<component>-<key> and
# its build added to the binary cache. Every other component is taken warm, as `make setup`
# takes it (binaries copied from the cache, the venv from pip's cache). So a changed pin costs
# its own component's cold build, not every component's (~25 minutes on the 2-core machine).
#
# The keys: a tool's is its cache entry's (hack/build-binaries.sh --keys: go.mod, go.sum, the
# Go release, the link flags, its extra step); the venv's is hack/requirements.lock,
# hack/install-python.sh and the Python release. `make setup-cold` still proves every component
# together in a fresh clone, and records them too.
#
#   hack/setup-ci.sh            in CI's checkout (a fresh clone: a venv still to prove needs no
#                               .venv there)
#   hack/setup-ci.sh --keys     print each component's key and whether it is proven; do nothing
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
proven="$cache/cold-proven"
python="${PYTHON:-python3}"

log() { printf '[setup-ci %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# venv_key: the venv's component key, venv-<digest>.
venv_key() {
  { cat hack/requirements.lock hack/install-python.sh; "$python" -c 'import sys; print(sys.version)'; } |
    sha256sum | cut -c1-16 | sed 's/^/venv-/'
}

components=("$(venv_key)")
keys="$(bash hack/build-binaries.sh --keys)"
mapfile -t -O 1 components <<<"$keys"

if [ "${1:-}" = "--keys" ]; then
  for c in "${components[@]}"; do
    if [ -e "$proven/$c" ]; then echo "$c proven $(cat "$proven/$c")"; else echo "$c new"; fi
  done
  exit 0
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kubetrain-ci.XXXXXX")"
# Go marks its module cache read-only; make it writable again so it can be removed.
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

# cold COMPONENT CMD...: run CMD with empty caches of its own, then record COMPONENT proven.
cold() {
  local component="$1" fresh="$tmp/$1" t=$SECONDS
  shift
  mkdir -p "$fresh"
  log "$component: not proven cold here: building it from empty caches"
  # bin/ holding this build already (a checkout set up before) must not stand in for it.
  { grep -lx "$component" bin/.*.key 2>/dev/null || true; } | xargs -r rm -f
  env KUBETRAIN_CACHE="$fresh/cache" GOMODCACHE="$fresh/gomod" GOCACHE="$fresh/gocache" \
    PIP_CACHE_DIR="$fresh/pip" UV_CACHE_DIR="$fresh/uv" GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
    "$@"
  local elapsed=$((SECONDS - t)) entry
  mkdir -p "$proven"
  for entry in "$fresh/cache"/*/; do  # the cold build joins the binary cache
    [ -d "$entry" ] && [ ! -e "$cache/$(basename "$entry")" ] && cp -a "$entry" "$cache/"
  done
  printf '%s %ss\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" >"$proven/$component"
  chmod -R u+w "$fresh" && rm -rf "$fresh"
  summary+=("$component cold ${elapsed}s")
}

summary=()
started=$SECONDS
t=$SECONDS
make --no-print-directory system
summary+=("system $((SECONDS - t))s")

venv="${components[0]}"
if [ -e "$proven/$venv" ]; then
  t=$SECONDS
  make --no-print-directory venv
  summary+=("$venv warm $((SECONDS - t))s")
else
  [ ! -e .venv ] || { log "ERROR: $venv is to be proven cold, and .venv exists: use a fresh clone"; exit 1; }
  cold "$venv" make --no-print-directory venv
fi

warm=()
for c in "${components[@]:1}"; do
  tool="${c%-*}"
  if [ -e "$proven/$c" ]; then
    warm+=("$tool")
  else
    cold "$c" bash hack/build-binaries.sh "$tool"
  fi
done
if [ ${#warm[@]} -gt 0 ]; then
  t=$SECONDS
  bash hack/build-binaries.sh "${warm[@]}"
  summary+=("${warm[*]} warm $((SECONDS - t))s")
fi

.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_pins.py
( IFS=,; log "done in $((SECONDS - started))s (${summary[*]})" )
