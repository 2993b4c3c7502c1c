#!/usr/bin/env bash
# Set up, then open napari with napari-ctseg, the sample CT and the CT view widget.
# Without a display (no $DISPLAY) it runs under Xvfb, saves a screenshot to
# screenshots/demo.png and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/python -m napari_ctseg._napari.demo "$@"
fi
mkdir -p screenshots
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m napari_ctseg._napari.demo \
  --screenshot screenshots/demo.png "$@"
