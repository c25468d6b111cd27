#!/usr/bin/env bash
# Prints one digest of every locked build input: the tools' module graphs, the Python lock and
# the scripts that install them. hack/node-digest.sh includes it; `make setup-cold` names the
# lock it proved by it. (CI proves the components one by one: hack/setup-ci.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
cat hack/versions.env hack/tools/*/go.mod hack/tools/*/go.sum hack/requirements.lock \
  hack/requirements-setup.in hack/build-binaries.sh hack/install-python.sh | sha256sum | cut -c1-16
