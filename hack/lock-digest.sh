#!/usr/bin/env bash
# Prints one digest of every locked build input: the tools' module graphs, the Python lock and
# the scripts that install them. `make setup-cold` records it; .ci/run compares against it.
set -euo pipefail
cd "$(dirname "$0")/.."
cat hack/versions.env hack/tools/*/go.mod hack/tools/*/go.sum hack/requirements.lock \
  hack/requirements-setup.in hack/build-binaries.sh hack/install-python.sh | sha256sum | cut -c1-16
