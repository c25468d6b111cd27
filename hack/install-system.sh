#!/usr/bin/env bash
# The Debian packages the tests use, at the versions hack/versions.env pins: tmux (renders
# `kubectl train watch` in a real terminal) and Prometheus (scrapes the operator in the e2e
# suite). Nothing is installed when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.env
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
wanted=()
command -v tmux >/dev/null || wanted+=(tmux)
have="$(dpkg-query -W -f='${Version}' prometheus 2>/dev/null || true)"
[ "$have" = "$PROMETHEUS_DEB_VERSION" ] || wanted+=("prometheus=$PROMETHEUS_DEB_VERSION")
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "[setup] installing ${wanted[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
fi
