#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: unit, real tools, root (loop devices,
# mounts), end to end against a local HTTP server and OCI registry, plus ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
