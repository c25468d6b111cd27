#!/usr/bin/env bash
# `make venv`: .venv with exactly the versions in hack/requirements.lock (every hash checked,
# nothing resolved), then the package itself, editable, built with the locked setuptools.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off \
  --require-hashes --no-deps -r hack/requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
# The lock is complete and consistent with the package's own requirements (every extra).
.venv/bin/python -m pip check
