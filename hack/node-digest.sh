#!/usr/bin/env bash
# Prints one digest of every input of the real node's tier (make test-node): the images'
# inputs, the locked binaries, the local cluster's code, the Pod sandbox, the chart, the
# tier's tests and the custom example it runs. .ci/run runs the tier when the digest is new.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  bash hack/build-images.sh --digest
  bash hack/lock-digest.sh
  find operator/kubetrain/localcluster images/pause charts tests/node examples/custom-job \
    hack/build-custom-example.sh hack/node-digest.sh -type f ! -name '*.pyc' -print0 |
    sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16
