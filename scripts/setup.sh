#!/usr/bin/env bash
# Install everything napari-ctseg needs on a fresh Debian/Ubuntu machine:
# the system libraries Qt and Xvfb need (apt), and a virtual environment .venv with the
# Python packages. Safe to run again: it skips what is already there.
#
# GPU users: set TORCH_SPEC to the torch build you want (default: torch==2.13.0, which on
# this project's machines is the CPU build), e.g. TORCH_SPEC="torch==2.13.0" with
# PIP_INDEX_URL pointing at the CUDA wheel index of your choice.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
  dicom3tools)  # dciodvfy: the DICOM SEG and RTSTRUCT checks
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.ctseg-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (log: .venv/pip.log)"
  # torch first and pinned, so nothing pulls a multi-GB CUDA build on a CPU machine.
  if ! { .venv/bin/python -m pip install "$TORCH_SPEC" &&
         .venv/bin/python -m pip install -e ".[test]"; } >.venv/pip.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip.log | tail -30
    echo "setup: pip install failed (see .venv/pip.log)" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
