#!/usr/bin/env bash
# Regenerates hack/requirements.lock, the exact versions and hashes `make venv` installs:
# pyproject.toml's dependencies with every extra, and what building the package needs
# (hack/requirements-setup.in). Part of `make lock`. pyproject.toml keeps its ranges for
# library users; this lock is what every developer machine and CI runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
uv="${UV:-.venv/bin/uv}"
[ -x "$uv" ] || { echo "no $uv: run 'make venv' first (uv is locked in the dev extra), or set UV" >&2; exit 1; }
# The machines this project runs on: CPython 3.11 on x86-64 Linux.
"$uv" pip compile --quiet pyproject.toml hack/requirements-setup.in --all-extras --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "make lock" -o hack/requirements.lock
echo "[lock] hack/requirements.lock: $(grep -c '^[A-Za-z0-9].*==' hack/requirements.lock) packages"
