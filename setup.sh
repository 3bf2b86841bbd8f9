#!/usr/bin/env bash
# Installs what lfvila needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
# ffmpeg and chromium from the system packages (if missing) and this package with its test tools.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
# Headless Chromium: the browse page's test opens the page in a real browser. Debian calls
# the package chromium, Ubuntu chromium-browser.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium-browser >/dev/null
fi
# torch first, pinned: the local CPU wheel. Unpinned, a dependency (wids, datasets) would
# pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,s3,model,asr]"
