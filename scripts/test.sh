#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: unit, real tools, root (loop devices,
# mounts), end to end against a local HTTP server and OCI registry, plus ruff and mypy; then
# the end-to-end tests once more with the rootless backend. Arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
# the end-to-end builds again, every in-process command line with --rootless: both backends
# pass the same suite (tests of the mounted backend itself are marked mounted_only)
exec .venv/bin/python -m pytest "$@" --backend rootless tests/e2e
