# How the base's root filesystem is made from packages.lock (sourced by hack/build-base.sh; its
# digest, with packages.lock and sources.list, names the base image).

# Every path dpkg would write that no entry point reads: manuals, docs (but the licences), locales.
dpkg_opts=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
)

# rootfs VARIANT INCLUDES OUT.TAR SOURCES...: Debian bookworm, merged /usr, as root.
rootfs() {
  local variant="$1" include="$2" out="$3"
  shift 3
  mmdebstrap --quiet --mode=root --variant="$variant" --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${dpkg_opts[@]}" bookworm "$out" "$@"
}

# The image's configuration.
config=(
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env LANG=C.UTF-8
  --cmd /bin/bash
  --label org.opencontainers.image.title=kubetrain-base
  --label "org.opencontainers.image.description=Debian bookworm with CPython 3.11, from images/base/packages.lock"
)
