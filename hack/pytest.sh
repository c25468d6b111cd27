#!/usr/bin/env bash
# Runs pytest from the project's virtualenv. "No tests collected" (exit 5) is a failure:
# a suite that ran nothing has not passed.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests from: $*" >&2
fi
exit "$rc"
