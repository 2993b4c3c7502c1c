#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. GUI tests run in a real napari
# viewer on a virtual X server (pytest-xvfb starts Xvfb by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
