#!/bin/sh
# Run inside an image: every package of /usr/share/kubetrain/base-packages.lock is installed at
# exactly its locked version. Both ways of building the base run it (hack/build-base.sh's image
# through the image tests, images/base/Dockerfile at its build), so both bases hold the same
# Debian packages: the same CPython, the same glibc.
set -eu
lock=/usr/share/kubetrain/base-packages.lock
bad=0
for pin in $(grep -v '^#' "$lock"); do
  package="${pin%%=*}"
  want="${pin#*=}"
  have="$(dpkg-query -W -f '${Version}' "$package" 2>/dev/null || true)"
  if [ "$have" != "$want" ]; then
    echo "base: $package is ${have:-not installed}, the lock says $want" >&2
    bad=1
  fi
done
[ "$bad" = 0 ] || exit 1
python3.11 -c 'import platform, sys; print("base: CPython", platform.python_version(), "glibc", platform.libc_ver()[1])'
