#!/usr/bin/env bash
# The browser tests drive Debian's chromium (Playwright's own browser download cannot work
# here). Install it when missing; needs root (as on CI) or sudo.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
exec bash "$(dirname "$0")/apt-install.sh" chromium "the browser tests"
