#!/usr/bin/env bash
# `make setup`: every step a fresh machine needs, each timed; a failure names its step and the
# command that reruns it.
set -uo pipefail
cd "$(dirname "$0")/.."

steps=(
  "system|Debian packages the tests and the real node use (tmux, Prometheus, buildah, podman, runc, CNI plugins, iptables)"
  "venv|.venv from hack/requirements.lock (hashes checked), the package installed editable"
  "binaries|etcd, Kubernetes (kubelet and kube-proxy too), helm, Kueue, containerd and CoreDNS built from the locked modules in hack/tools/ into bin/"
)
started=$SECONDS
summary=()
for i in "${!steps[@]}"; do
  name="${steps[$i]%%|*}" what="${steps[$i]#*|}"
  printf '[setup] step %d/%d %s: %s\n' $((i + 1)) ${#steps[@]} "$name" "$what"
  t=$SECONDS
  if ! make --no-print-directory "$name"; then
    printf '[setup] FAILED at step %s after %ds. Fix the error above, then rerun: make %s (then make setup)\n' \
      "$name" $((SECONDS - t)) "$name" >&2
    exit 1
  fi
  summary+=("$name $((SECONDS - t))s")
  printf '[setup] step %s done in %ds\n' "$name" $((SECONDS - t))
done
( IFS=,; printf '[setup] done in %ds (%s)\n' $((SECONDS - started)) "${summary[*]}" )
