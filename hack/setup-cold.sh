#!/usr/bin/env bash
# `make setup-cold`: proves that `make setup` works on a fresh machine. It runs the whole setup
# in a fresh clone of HEAD in a temporary folder (your checkout, its .venv and bin/ are left
# alone), with empty, temporary caches (the binary cache, Go's module and build caches, pip's
# cache) and GOFLAGS=-mod=readonly, then checks the pins (tests/unit/test_pins.py) against the
# result.
#
# KUBETRAIN_COLD_KEEP=DIR keeps the fresh clone in DIR (to run `make test` in it afterwards).
#
# A pass records every component it built (the venv and each tool: hack/setup-ci.sh --keys) as
# proven cold in the binary cache (cold-proven/), and adds its builds to that cache: CI
# (hack/setup-ci.sh) then takes them warm. CI proves one component at a time itself.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"

log() { printf '[setup-cold %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kubetrain-cold.XXXXXX")"
# Go marks its module cache read-only; make it writable again so it can be removed.
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

checkout="${KUBETRAIN_COLD_KEEP:-$tmp/kubetrain}"
[ ! -e "$checkout" ] || { log "ERROR: $checkout exists"; exit 1; }
[ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ] ||
  log "note: uncommitted changes are not part of the proof: it builds HEAD ($(git -C "$root" rev-parse --short HEAD))"
git clone --quiet --no-hardlinks "$root" "$checkout"
digest="$(bash "$checkout/hack/lock-digest.sh")"
log "cold setup of $(git -C "$checkout" rev-parse --short HEAD) (lock $digest) in $checkout, caches in $tmp"

started=$SECONDS
env KUBETRAIN_CACHE="$tmp/cache" GOMODCACHE="$tmp/gomod" GOCACHE="$tmp/gocache" \
  PIP_CACHE_DIR="$tmp/pip" UV_CACHE_DIR="$tmp/uv" GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
  make --no-print-directory -C "$checkout" setup
elapsed=$((SECONDS - started))
"$checkout/.venv/bin/python" -m pytest -q -p no:cacheprovider "$checkout/tests/unit/test_pins.py"

mkdir -p "$cache/cold-proven"
for entry in "$tmp/cache"/*/; do
  name="$(basename "$entry")"
  [ -e "$cache/$name" ] || cp -a "$entry" "$cache/$name"
done
bash "$checkout/hack/setup-ci.sh" --keys | while read -r component _; do
  printf '%s %ss (make setup-cold, all together)\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" \
    >"$cache/cold-proven/$component"
done
log "cold setup passed in ${elapsed}s (lock $digest)"
