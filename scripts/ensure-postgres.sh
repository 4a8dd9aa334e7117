#!/usr/bin/env bash
# The tracking-server tests and scripts/tracking-stack.sh run a throwaway PostgreSQL cluster
# (initdb/pg_ctl). Install Debian's postgresql package when its binaries are missing; needs
# root (as on CI) or sudo. (Where the package's own service starts Debian's default cluster
# on 5432, it is left alone: the stack uses a cluster of its own on a free port.)
set -euo pipefail
if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then exit 0; fi
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then exit 0; fi
exec bash "$(dirname "$0")/apt-install.sh" postgresql "the tracking-server tests (PostgreSQL)"
