#!/usr/bin/env bash
# The monitoring test checks docs/prometheus/*.rules.yml with promtool (check and unit-test
# the alert rules). Install Debian's prometheus package when promtool is missing; needs root
# (as on CI) or sudo. Only the promtool binary is used; no Prometheus server is started.
set -euo pipefail
if command -v promtool >/dev/null; then exit 0; fi
exec bash "$(dirname "$0")/apt-install.sh" prometheus "the alert-rule tests (promtool)"
