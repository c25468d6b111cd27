#!/usr/bin/env bash
# `make setup-cold`: proves that `make setup` works on a fresh machine. It runs the whole setup
# with empty, temporary caches (the binary cache, Go's module and build caches, pip's cache)
# and GOFLAGS=-mod=readonly, then checks the pins (tests/unit/test_pins.py) against the result.
#
#   hack/setup-cold.sh            a fresh clone of HEAD in a temporary folder (your checkout,
#                                 its .venv and bin/ are left alone)
#   hack/setup-cold.sh --here     this checkout, which must be a fresh clone (no .venv, no bin/):
#                                 CI's checkout. The binaries it built are then added to the
#                                 binary cache, so later setups with the same lock only copy them.
#
# KUBETRAIN_COLD_KEEP=DIR keeps the fresh clone in DIR (to run `make test` in it afterwards).
#
# A successful --here run records the lock's digest (hack/lock-digest.sh) in the binary cache
# (cold-proven/): .ci/run proves the cold path again whenever a submission's locked inputs have
# a digest CI has not proven on this machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
here=0
[ "${1:-}" = "--here" ] && here=1

log() { printf '[setup-cold %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kubetrain-cold.XXXXXX")"
# Go marks its module cache read-only; make it writable again so it can be removed.
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

if [ "$here" = 1 ]; then
  checkout="$root"
  if [ -e "$root/.venv" ] || [ -e "$root/bin" ]; then
    log "ERROR: --here needs a fresh clone (this checkout has .venv or bin/); run without --here"
    exit 1
  fi
else
  checkout="${KUBETRAIN_COLD_KEEP:-$tmp/kubetrain}"
  [ ! -e "$checkout" ] || { log "ERROR: $checkout exists"; exit 1; }
  [ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ] ||
    log "note: uncommitted changes are not part of the proof: it builds HEAD ($(git -C "$root" rev-parse --short HEAD))"
  git clone --quiet --no-hardlinks "$root" "$checkout"
fi
digest="$(bash "$checkout/hack/lock-digest.sh")"
log "cold setup of $(git -C "$checkout" rev-parse --short HEAD) (lock $digest) in $checkout, caches in $tmp"

started=$SECONDS
env KUBETRAIN_CACHE="$tmp/cache" GOMODCACHE="$tmp/gomod" GOCACHE="$tmp/gocache" \
  PIP_CACHE_DIR="$tmp/pip" UV_CACHE_DIR="$tmp/uv" GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
  make --no-print-directory -C "$checkout" setup
elapsed=$((SECONDS - started))
"$checkout/.venv/bin/python" -m pytest -q -p no:cacheprovider "$checkout/tests/unit/test_pins.py"

if [ "$here" = 1 ]; then
  mkdir -p "$cache"
  for entry in "$tmp/cache"/*/; do
    name="$(basename "$entry")"
    [ -e "$cache/$name" ] || cp -a "$entry" "$cache/$name"
  done
  mkdir -p "$cache/cold-proven"
  printf '%s %ss\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" >"$cache/cold-proven/$digest"
fi
log "cold setup passed in ${elapsed}s (lock $digest)"
