#!/usr/bin/env bash
# The custom-job example (examples/custom-job, docs/custom-jobs.md) as an OCI image, without
# Docker: the Go program built here as a static binary (standard library only, nothing
# downloaded), then `buildah from scratch` with the binary as its entrypoint, run as user 1000.
# Tagged localhost/kubetrain/custom-example:<digest of its inputs> and :latest in kubetrain's
# container storage (hack/oci.sh); an image whose input digest is already built is reused.
#   hack/build-custom-example.sh                  build the image; prints its name
#   hack/build-custom-example.sh --archive PATH   also write it as an OCI archive at PATH
#                                                 (for another runtime: ctr import, podman load)
#   hack/build-custom-example.sh --binary PATH    only build the binary, at PATH
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
example=examples/custom-job
repository=localhost/kubetrain/custom-example
oci=hack/oci.sh
ldflags="-buildid="  # with -trimpath: the same inputs give the same bytes

usage() { sed -n '7,9s/^#   //p' "$0" >&2; exit 2; }
archive="" binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) [ $# -ge 2 ] || usage; archive="$(realpath -m "$2")"; shift 2 ;;
    --binary) [ $# -ge 2 ] || usage; binary="$(realpath -m "$2")"; shift 2 ;;
    *) usage ;;
  esac
done
command -v go >/dev/null || { echo "go is required to build the example" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

build() { # PATH: the static binary
  (cd "$example" && go build -trimpath -ldflags "$ldflags" -o "$1" .)
}

if [ -n "$binary" ]; then
  build "$binary"
  echo "$binary"
  exit 0
fi
command -v buildah >/dev/null || { echo "no buildah: run 'make system'" >&2; exit 1; }

# Every file the image is made of, names and contents, with the Go release and link flags.
digest="$(
  {
    go env GOVERSION
    echo "$ldflags"
    sed -n '/^# inputs-start/,/^# inputs-end/p' "$0"
    git ls-files -co --exclude-standard -- "$example/go.mod" "$example/*.go" | LC_ALL=C sort |
      while read -r f; do printf '%s\n' "$f"; sha256sum < "$f"; done
  } | sha256sum | cut -c1-16
)"
tag="$repository:$digest"

if ! "$oci" podman image exists "$tag"; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  build "$work/custom-job"
  # inputs-start: how the image is assembled (part of its digest)
  ctr="$("$oci" buildah from --pull=never scratch)"
  "$oci" buildah copy --quiet --chmod 0755 "$ctr" "$work/custom-job" /custom-job >/dev/null
  "$oci" buildah config --entrypoint '["/custom-job"]' --cmd '' --user 1000:1000 \
    --label "io.kubetrain.example.inputs=$digest" "$ctr"
  "$oci" buildah commit --quiet --rm --format oci "$ctr" "$tag" >/dev/null
  # inputs-end
  # The store keeps the current inputs' image only.
  "$oci" podman images --format '{{.Repository}}:{{.Tag}}' "$repository" |
    { grep -E "^$repository:[0-9a-f]{16}\$" || true; } | { grep -vxF "$tag" || true; } |
    xargs -r "$oci" podman rmi >/dev/null
fi
"$oci" buildah tag "$tag" "$repository:latest"

if [ -n "$archive" ]; then
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive.partial"
  "$oci" buildah push --quiet --format oci "$tag" "oci-archive:$archive.partial:$tag"
  mv -f "$archive.partial" "$archive"
  echo "archive: $archive" >&2
fi
echo "$tag"
