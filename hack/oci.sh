#!/usr/bin/env bash
# Runs buildah, podman or skopeo on kubetrain's own container storage, with its own
# configuration (images/containers/): no network for containers unless asked for, no
# registry searched, nothing pulled. The storage lives in the build cache
# (~/.cache/kubetrain/containers), so built images and their layers survive a fresh clone
# the way the binaries do.
#   hack/oci.sh podman images
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
store="$cache/containers"
mkdir -p "$store/storage" "$store/run"
conf="$store/storage.conf"
want="$(printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"' "$store/storage" "$store/run")"
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then  # written once; concurrent calls race safely
  printf '%s\n' "$want" > "$conf.$$" && mv -f "$conf.$$" "$conf"
fi
export CONTAINERS_STORAGE_CONF="$conf"
# The repository's containers.conf, its open-files limit kept within this machine's hard limit.
export CONTAINERS_CONF="$root/images/containers/containers.conf"
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt 16384 ]; then
  sed "s/nofile=16384:16384/nofile=$hard:$hard/" "$CONTAINERS_CONF" > "$store/containers.conf.$$"
  mv -f "$store/containers.conf.$$" "$store/containers.conf"
  export CONTAINERS_CONF="$store/containers.conf"
fi
export CONTAINERS_REGISTRIES_CONF="$root/images/containers/registries.conf"
export BUILDAH_ISOLATION=oci
tool="$1"
shift
case "$tool" in
  buildah | podman | skopeo) ;;
  *) echo "hack/oci.sh: runs buildah, podman or skopeo, not '$tool'" >&2; exit 2 ;;
esac
exec "$tool" "$@"
