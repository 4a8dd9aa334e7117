#!/usr/bin/env bash
# The browser tests drive Debian's chromium (Playwright's own browser download cannot work
# here). Install it when missing; needs root (as on CI) or sudo.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "test: installing chromium for the browser tests (apt-get)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "chromium is missing and this user cannot install it: run 'apt-get install chromium' as root" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
