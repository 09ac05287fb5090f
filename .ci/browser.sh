#!/usr/bin/env bash
# Debian's chromium for the browser test of the GUI (tests/test_gui_browser.py). Idempotent:
# nothing is done when it is installed already. Playwright's own browser downloads cannot
# reach their servers here, so the test drives this one (executable_path=/usr/bin/chromium).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "chromium is missing: run as root or install it (apt-get install chromium chromium-driver)" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium
