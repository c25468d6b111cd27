#!/usr/bin/env bash
# `make images`: the operator and trainer images, built daemonless with buildah from locked
# inputs only, each printed with its build time, digest and sizes.
#
#   1. the base: Debian bookworm and CPython 3.11 from images/base/packages.lock (hack/build-base.sh);
#   2. the wheelhouse: every wheel the images' locks name, downloaded once by hash
#      (images/<image>/requirements.lock, images/build.lock: shares of hack/requirements.lock);
#   3. each image from its Dockerfile, with no network (everything comes from the base and the
#      wheelhouse), tagged localhost/kubetrain/<image>:<digest of its inputs> and
#      $IMAGE_REGISTRY/<image>:$IMAGE_TAG; an image whose input digest is already built is reused;
#   4. each image exported as a gzip OCI archive (what a registry push carries): its manifest
#      digest is the digest to pin the chart with.
# Cached under $KUBETRAIN_CACHE (default ~/.cache/kubetrain): containers/ (the image store and
# its layers), wheelhouse/, images/ (the archives). build/images.json lists what was built. The
# images and archives of older inputs are removed once the current ones are built.
#   IMAGES="operator" make images     build some of them
#   IMAGE_BUILDER=docker make images  on a host with Docker (buildx) instead of buildah
#   hack/build-images.sh --digest     one digest of every image's inputs; builds nothing
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cache="${KUBETRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetrain}"
registry="${IMAGE_REGISTRY:-ghcr.io/kubetrain}"
version="${IMAGE_TAG:-0.1.0}"
builder="${IMAGE_BUILDER:-buildah}"
read -r -a names <<< "${IMAGES:-operator trainer-lora trainer-vision}"
oci=hack/oci.sh
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

case "$builder" in
  buildah) command -v buildah >/dev/null || { echo "no buildah: run 'make system'" >&2; exit 1; } ;;
  docker) command -v docker >/dev/null || { echo "no docker" >&2; exit 1; } ;;
  *) echo "IMAGE_BUILDER is buildah or docker, not '$builder'" >&2; exit 2 ;;
esac
[ -x .venv/bin/pip ] || { echo "no .venv: run 'make venv'" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# inputs IMAGE: every file its build reads, contents and names, as one digest.
inputs() {
  {
    echo "$base" "$builder"
    git ls-files -co --exclude-standard -- pyproject.toml README.md operator/kubetrain \
      "images/$1/Dockerfile" "images/$1/Dockerfile.dockerignore" "images/$1/requirements.lock" \
      images/build.lock | grep -v '/__pycache__/' | LC_ALL=C sort |
      while read -r f; do printf '%s\n' "$f"; sha256sum < "$f"; done
  } | sha256sum | cut -c1-16
}

if [ "${1:-}" = "--digest" ]; then
  base="$(hack/build-base.sh --tag)"
  for name in "${names[@]}"; do inputs "$name"; done | sha256sum | cut -c1-16
  exit 0
fi

# 1. The base.
t=$SECONDS
if [ "$builder" = docker ]; then
  base="localhost/kubetrain/base:$(cat images/base/packages.lock images/base/Dockerfile | sha256sum | cut -c1-16)"
  docker build --quiet -f images/base/Dockerfile -t "$base" images/base >/dev/null
else
  base="$(hack/build-base.sh)"
fi
log "base $base ($((SECONDS - t)) s)"

# 2. The wheelhouse: one folder of exactly the locked wheels, fetched by hash, kept by the
# digest of the locks that name them.
locks=(images/operator/requirements.lock images/trainer-lora/requirements.lock
  images/trainer-vision/requirements.lock images/build.lock)
wheels="$cache/wheelhouse/$(cat "${locks[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$wheels/.complete" ]; then
  t=$SECONDS
  log "wheelhouse: downloading the locked wheels into $wheels"
  # The images share pins (all from hack/requirements.lock): each package once.
  awk '/^[A-Za-z0-9]/ { split($1, p, "=="); keep = !(tolower(p[1]) in seen); seen[tolower(p[1])] = 1 }
       /^[A-Za-z0-9]/ || /^ +--hash/ { if (keep) print }' "${locks[@]}" > "$work/all.lock"
  rm -rf "$wheels.partial"
  .venv/bin/pip download --quiet --progress-bar off --no-deps --require-hashes \
    --only-binary=:all: -d "$wheels.partial" -r "$work/all.lock"
  touch "$wheels.partial/.complete"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
  log "wheelhouse: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1) ($((SECONDS - t)) s)"
fi

# older REPOSITORY TAG: the other tags of REPOSITORY in the store (those of older inputs).
older() {
  "$oci" podman images --format '{{.Repository}}:{{.Tag}}' "$1" |
    { grep -E "^$1:[0-9a-f]+\$" || true; } | { grep -vxF "$2" || true; }
}

# 3 and 4. The images.
mkdir -p "$cache/images" build
summary=()
cached=()
for name in "${names[@]}"; do
  [ -f "images/$name/Dockerfile" ] || { echo "no image '$name' (images/*/Dockerfile)" >&2; exit 2; }
  digest="$(inputs "$name")"
  tag="localhost/kubetrain/$name:$digest"
  record="$cache/images/$name-$digest.json"
  if [ "$builder" = docker ]; then
    t=$SECONDS
    docker buildx build --load --network=none --build-arg "BASE=$base" \
      --build-context "wheels=$wheels" -f "images/$name/Dockerfile" -t "$tag" -t "$registry/$name:$version" .
    size="$(docker image inspect --format '{{.Size}}' "$tag")"
    printf '{"name": "%s", "tag": "%s", "ref": "%s", "digest": "%s", "buildSeconds": %d, "unpackedBytes": %d}\n' \
      "$name" "$tag" "$registry/$name:$version" "$(docker image inspect --format '{{.Id}}' "$tag")" \
      $((SECONDS - t)) "$size" > "$record"
  elif [ -f "$record" ] && "$oci" podman image exists "$tag"; then
    log "$name: inputs $digest already built"
    cached+=("$name")
  else
    t=$SECONDS
    log "$name: building $tag"
    "$oci" buildah bud --quiet --layers --pull=never --network=none --build-arg "BASE=$base" \
      --build-context "wheels=$wheels" -f "images/$name/Dockerfile" -t "$tag" . >/dev/null
    built=$((SECONDS - t))
    archive="$cache/images/$name-$digest.oci.tar"
    rm -f "$archive.partial"
    "$oci" buildah push --quiet --format oci "$tag" "oci-archive:$archive.partial:$registry/$name:$version"
    mv "$archive.partial" "$archive"
    # The manifest an OCI registry receives from this archive, and what it weighs there.
    tar -xOf "$archive" index.json > "$work/index.json"
    manifest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/index.json")"
    compressed="$(tar -xOf "$archive" "blobs/sha256/${manifest#sha256:}" |
      python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"] + sum(l["size"] for l in m["layers"]))')"
    unpacked="$("$oci" podman image inspect --format '{{.Size}}' "$tag")"
    printf '{"name": "%s", "tag": "%s", "ref": "%s", "digest": "%s", "archive": "%s", "buildSeconds": %d, "exportSeconds": %d, "compressedBytes": %d, "unpackedBytes": %d}\n' \
      "$name" "$tag" "$registry/$name:$version" "$manifest" "$archive" "$built" \
      $((SECONDS - t - built)) "$compressed" "$unpacked" > "$record"
  fi
  summary+=("$record")
  if [ "$builder" = buildah ]; then  # the cache holds what the current inputs give, no more
    older "localhost/kubetrain/$name" "$tag" | xargs -r "$oci" podman rmi >/dev/null
    find "$cache/images" -name "$name-*" ! -name "$name-$digest.*" -delete
    "$oci" podman tag "$tag" "$registry/$name:$version"
  fi
done
if [ "$builder" = buildah ] && [ "${#names[@]}" = 3 ]; then
  older localhost/kubetrain/base "$base" | xargs -r "$oci" podman rmi >/dev/null
  # Layers only older builds used; a current build's cached steps have children and stay.
  "$oci" podman image prune --force >/dev/null
  find "$cache/wheelhouse" -mindepth 1 -maxdepth 1 ! -name "${wheels##*/}" -exec rm -rf {} +
fi

python3 - "${summary[@]}" > build/images.json <<'PY'
import json, sys
records = [json.load(open(p)) for p in sys.argv[1:]]
print(json.dumps({record["name"]: record for record in records}, indent=2))
PY
CACHED="${cached[*]}" python3 - build/images.json <<'PY'
import json, os, sys
cached = os.environ["CACHED"].split()
images = json.load(open(sys.argv[1]))
for image in images.values():
    sizes = "".join(
        f"  {label} {image[key] / 1e6:,.0f} MB"
        for label, key in (("compressed", "compressedBytes"), ("unpacked", "unpackedBytes"))
        if key in image
    )
    built = f"built in {image['buildSeconds']} s" + (
        f" (+{image['exportSeconds']} s export)" if "exportSeconds" in image else ""
    )
    if image["name"] in cached:
        built = f"cached ({built} earlier)"
    print(f"[images] {image['name']:<15} {built}{sizes}")
    print(f"[images]   {image['ref']}@{image['digest']}")
values = {"operator": "image.digest", "trainer-lora": "trainer.llmImageDigest",
          "trainer-vision": "trainer.visionImageDigest"}
pins = [f"--set {values[n]}={i['digest']}" for n, i in images.items() if i.get("archive")]
if pins:
    print("[images] pinned by digest (docs/helm.md): helm upgrade --install kubetrain charts/kubetrain " + " ".join(pins))
PY
log "done in $((SECONDS - started)) s; build/images.json lists them"
