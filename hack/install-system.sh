#!/usr/bin/env bash
# The Debian packages the tests use, at the versions hack/versions.env pins: tmux (renders
# `kubectl train watch` in a real terminal), Prometheus (scrapes the operator in the e2e
# suite), and what builds and runs the images (`make images`, `make test-images`): buildah,
# podman, runc and mmdebstrap; and what the real node needs beside its built binaries
# (`make cluster-up NODE=real`, `make test-node`): the CNI plugins and iptables. Nothing is
# installed when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.env
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
wanted=()
command -v tmux >/dev/null || wanted+=(tmux)
have="$(dpkg-query -W -f='${Version}' prometheus 2>/dev/null || true)"
[ "$have" = "$PROMETHEUS_DEB_VERSION" ] || wanted+=("prometheus=$PROMETHEUS_DEB_VERSION")
for pin in "buildah=$BUILDAH_DEB_VERSION" "podman=$PODMAN_DEB_VERSION" "runc=$RUNC_DEB_VERSION" \
  "mmdebstrap=$MMDEBSTRAP_DEB_VERSION" "containernetworking-plugins=$CNI_PLUGINS_DEB_VERSION" \
  "iptables=$IPTABLES_DEB_VERSION"; do
  have="$(dpkg-query -W -f='${Version}' "${pin%%=*}" 2>/dev/null || true)"
  [ "$have" = "${pin#*=}" ] || wanted+=("$pin")
done
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "[setup] installing ${wanted[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
fi
