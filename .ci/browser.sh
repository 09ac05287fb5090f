#!/usr/bin/env bash
# System packages of the GUI tests, installed once (idempotent, ~0.1 s when present):
# Debian's chromium for the browser test (tests/test_gui_browser.py; playwright's own browser
# downloads cannot reach their servers here, so it drives /usr/bin/chromium) and the shared
# libraries PyQt5's wheel loads for the offscreen Qt tests (tests/test_gui_traitsui.py).
set -euo pipefail
PKGS="chromium chromium-driver libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0"
# shellcheck disable=SC2086
if dpkg -s $PKGS >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "missing system packages for the GUI tests: apt-get install $PKGS (as root)" >&2
        exit 1
    }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
command -v chromium
