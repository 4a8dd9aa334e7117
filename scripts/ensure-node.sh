#!/usr/bin/env bash
# The identity tests start a real OpenID Provider (the oidc-provider npm package, installed
# by tests/support/oidc_provider.py with `npm ci` from its committed lock) on Node.js >= 20.19.
# Install Debian's nodejs and npm when missing; needs root (as on CI) or sudo.
set -euo pipefail
if command -v node >/dev/null && command -v npm >/dev/null; then exit 0; fi
command -v node >/dev/null || bash "$(dirname "$0")/apt-install.sh" nodejs "the identity provider tests"
command -v npm >/dev/null || bash "$(dirname "$0")/apt-install.sh" npm "the identity provider tests"
