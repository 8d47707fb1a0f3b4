#!/usr/bin/env bash
# The main job on the embedded default: generate a sample line, train, export int8, inspect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/kenpin demo "$@"
