#!/usr/bin/env bash
# Regenerates hack/requirements.lock, the exact versions and hashes `make venv` installs:
# pyproject.toml's dependencies with every extra, and what building the package needs
# (hack/requirements-setup.in). Part of `make lock`. pyproject.toml keeps its ranges for
# library users; this lock is what every developer machine and CI runs.
# Then each image's share of it (images/<image>/requirements.lock: the extras that image
# installs, every pin taken from hack/requirements.lock) and images/build.lock (what builds
# the package inside an image).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
uv="${UV:-.venv/bin/uv}"
[ -x "$uv" ] || { echo "no $uv: run 'make venv' first (uv is locked in the dev extra), or set UV" >&2; exit 1; }
# The machines this project runs on, and its images: CPython 3.11 on x86-64 Linux.
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)
"$uv" pip compile --quiet pyproject.toml hack/requirements-setup.in --all-extras --generate-hashes \
  "${target[@]}" --custom-compile-command "make lock" -o hack/requirements.lock
echo "[lock] hack/requirements.lock: $(grep -c '^[A-Za-z0-9].*==' hack/requirements.lock) packages"

# The extras each image installs (images/README.md).
declare -A extras=(
  [operator]=""
  [trainer-lora]="lora multimodal qlora fetch trackers"
  [trainer-vision]="vision fetch trackers"
)
for image in operator trainer-lora trainer-vision; do
  args=()
  for extra in ${extras[$image]}; do args+=(--extra "$extra"); done
  "$uv" pip compile --quiet pyproject.toml "${args[@]}" --constraint hack/requirements.lock \
    --generate-hashes "${target[@]}" --custom-compile-command "make lock" \
    -o "images/$image/requirements.lock"
  echo "[lock] images/$image/requirements.lock: $(grep -c '^[A-Za-z0-9].*==' "images/$image/requirements.lock") packages"
done
"$uv" pip compile --quiet hack/requirements-setup.in --constraint hack/requirements.lock \
  --generate-hashes "${target[@]}" --custom-compile-command "make lock" -o images/build.lock
echo "[lock] images/build.lock: $(grep -c '^[A-Za-z0-9].*==' images/build.lock) packages"
